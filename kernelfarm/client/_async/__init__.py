"""The one source of both clients: written for asyncio, turned into the blocking client
(:mod:`kernelfarm.client._sync`) by :mod:`kernelfarm.client.unasync`.  Edit here only."""
