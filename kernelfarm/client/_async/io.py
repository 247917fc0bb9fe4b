"""What differs between the two faces besides ``async``/``await``: waiting, asking many
kernels at once, and opening a connection once however many calls want it at the same
time.  Written by hand; ``_sync/io.py`` is its twin."""

from __future__ import annotations

import asyncio
from asyncio import gather, sleep
from typing import Awaitable, Callable, Generic, TypeVar

from kernelfarm.rpc.client import RpcClientConnection, connect

K = TypeVar("K")
V = TypeVar("V")

__all__ = ["OpenOnce", "RpcClientConnection", "connect", "gather", "sleep"]


class OpenOnce(Generic[K, V]):
    """Concurrent opens of one key share one attempt: a hundred calls that start at once
    make one connection to their kernel (and say its hello once), not a hundred."""

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    async def __call__(self, key: K, opener: Callable[[K], Awaitable[V]]) -> V:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(opener(key))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        # A caller that gives up (cancelled) must not cancel the others' connection.
        return await asyncio.shield(pending)
