"""kernelfarm: file-system and network operations served by a farm of single-CPU kernels.

``kernelfarm.Client`` is the blocking client; ``kernelfarm.aio.Client`` the asyncio one.
The client is imported on first use, not here: every kernel and supervisor process
imports this package, and none of them should load the client stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernelfarm.client import Client

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from kernelfarm.client import Client

        return Client
    raise AttributeError(f"module 'kernelfarm' has no attribute {name!r}")
