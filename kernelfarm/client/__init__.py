"""Clients: :class:`Client` (blocking) here, the asyncio one in :mod:`kernelfarm.aio`."""

from kernelfarm.client.blocking import Client

__all__ = ["Client"]
