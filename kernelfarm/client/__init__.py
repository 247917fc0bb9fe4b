"""Clients: :class:`Client` (blocking) here, the asyncio one in :mod:`kernelfarm.aio`.

Both are one source (``_async/``, with ``_sync/`` generated from it by :mod:`.unasync`):
the same methods, arguments, routing and retries.  :mod:`.routing` is the part without
I/O: the slot table, where a request goes, and when to retry.
"""

from kernelfarm.client._sync.farm import Client
from kernelfarm.client._sync.fs import FsApi
from kernelfarm.client._sync.net import NetApi, Socket

__all__ = ["Client", "FsApi", "NetApi", "Socket"]
