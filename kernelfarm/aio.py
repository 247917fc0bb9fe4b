"""``kernelfarm.aio.Client``: the asyncio client, with many requests in flight.

Same routing and retry rules as the blocking client (:mod:`kernelfarm.client.routing`);
each kernel gets one pipelined connection, so concurrent calls share it.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from kernelfarm.client.blocking import CONTROL_TIMEOUT_S
from kernelfarm.client.routing import RETRYABLE, RetryPolicy, Router, reaction_to
from kernelfarm.hostport import Addr, as_addr
from kernelfarm.rpc.client import RpcClientConnection, connect


class Client:
    def __init__(self, control: Addr | str, *, timeout: float | None = None,
                 retry: RetryPolicy | None = None) -> None:
        self.control = as_addr(control)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._conns: dict[Addr, RpcClientConnection] = {}
        self._connecting: dict[Addr, asyncio.Future[RpcClientConnection]] = {}
        self.router: Router | None = None

    async def connect(self) -> Client:
        self.router = Router(await self.cluster_map())
        return self

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # -- control API ----------------------------------------------------------------------

    async def _control(self, method: str, *params: Any,
                       timeout: float | None = CONTROL_TIMEOUT_S) -> Any:
        conn = await self._connection(self.control)
        return await conn.call(method, *params, timeout=self.timeout or timeout)

    async def cluster_map(self) -> dict[str, Any]:
        return await self._control("cluster.map")  # type: ignore[no-any-return]

    async def status(self) -> dict[str, Any]:
        return await self._control("cluster.status")  # type: ignore[no-any-return]

    async def scale(self, n: int) -> dict[str, Any]:
        return await self._control("cluster.scale", n,  # type: ignore[no-any-return]
                                   timeout=None)

    async def refresh(self) -> None:
        assert self.router is not None
        self.router.update(await self.cluster_map())

    # -- data path ------------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        if self.router is None:
            await self.connect()
        assert self.router is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry.deadline_s
        attempt = 0
        while True:
            addr = self.router.route(method, list(params))
            conn: RpcClientConnection | None = None
            try:
                conn = await self._connection(addr)
                return await conn.call(method, *params, timeout=self.timeout)
            except RETRYABLE as exc:
                reaction = reaction_to(exc, reached=conn is not None)
                if reaction is None or loop.time() >= deadline:
                    raise
                if reaction.backoff:
                    await asyncio.sleep(self.retry.delay(attempt))
                if reaction.refresh:
                    await self._refresh_quietly()
                if reaction.only_if_removed and addr in self.router.all_addrs.values():
                    raise
            attempt += 1

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except OSError:
            pass  # the supervisor is briefly away; the caller's deadline bounds this

    async def call_kernel(self, addr: Addr, method: str, *params: Any) -> Any:
        conn = await self._connection(addr)
        return await conn.call(method, *params, timeout=self.timeout)

    async def call_all(self, method: str, *params: Any) -> list[Any]:
        if self.router is None:
            await self.connect()
        assert self.router is not None
        return list(await asyncio.gather(
            *(self.call_kernel(addr, method, *params) for addr in self.router.kernels())))

    async def _connection(self, addr: Addr) -> RpcClientConnection:
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(addr)
        if pending is None:
            pending = asyncio.ensure_future(connect(addr[0], addr[1]))
            self._connecting[addr] = pending
            pending.add_done_callback(lambda _: self._connecting.pop(addr, None))
        conn = await asyncio.shield(pending)
        self._conns[addr] = conn
        return conn

    @functools.cached_property
    def fs(self) -> Any:
        from kernelfarm.fs.client import AsyncFsApi

        return AsyncFsApi(self.call, self.call_all)

    @functools.cached_property
    def net(self) -> Any:
        from kernelfarm.net.client import AsyncNetApi

        return AsyncNetApi(self.call)

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
