"""``kernelfarm.aio.Client``: the asyncio client, with many requests in flight.

The same methods and arguments as ``kernelfarm.Client`` (one source: the blocking client
is generated from this one), awaited; each kernel gets one pipelined connection, so
concurrent calls share it.  ``async with client.net.socket(ns) as sock`` opens and closes
a farm socket.
"""

from kernelfarm.client._async.farm import AsyncClient as Client
from kernelfarm.client._async.fs import AsyncFsApi as FsApi
from kernelfarm.client._async.net import AsyncNetApi as NetApi
from kernelfarm.client._async.net import AsyncSocket as Socket

__all__ = ["Client", "FsApi", "NetApi", "Socket"]
