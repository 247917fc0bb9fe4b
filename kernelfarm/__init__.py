"""kernelfarm: file-system and network operations served by a farm of single-CPU kernels.

``kernelfarm.Client`` is the blocking client; ``kernelfarm.aio.Client`` the asyncio one.
"""

from kernelfarm.client import Client

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]
