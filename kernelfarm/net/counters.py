"""A namespace's traffic and failure counters (``net.stats``).

Its own module because a namespace, its sockets and its relays all count into the same
object, and the sockets module sits below the namespace module.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class Counters:
    """Totals since the namespace appeared in this kernel (``net.stats``)."""

    bytes_in: int = 0
    bytes_out: int = 0
    connects: int = 0
    accepts: int = 0
    sockets_opened: int = 0
    denied: int = 0
    errors: int = 0

    def report(self, sockets_open: int, relays: int = 0) -> dict[str, Any]:
        return {"sockets_open": sockets_open, "relays": relays, **asdict(self)}

    def count_failure(self, exc: OSError) -> None:
        """``denied`` for a policy refusal, ``errors`` for anything else."""
        if exc.errno == errno.EACCES:
            self.denied += 1
        else:
            self.errors += 1
