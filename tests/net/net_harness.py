"""In-process harness for the net subsystem: a fake kernel context and client connection,
plain (non-farm) peers, and the echo peer process.

Calls go through the same steps as in a kernel: params and results are round-tripped
through msgpack (so handlers see wire types), the partition key function runs, and
exceptions are encoded and decoded with :mod:`kernelfarm.errors` as a client would see them.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack

from kernelfarm.auth.gate import Session
from kernelfarm.config import Config
from kernelfarm.errors import from_wire, to_wire
from kernelfarm.aio import NetApi as AsyncNetApi
from kernelfarm.kernel.commit import Flush, GroupCommit
from kernelfarm.net.subsystem import NetSubsystem

DEADLINE = 10.0


class FakeConnection:
    """A client connection: runs its close callbacks when the test drops it."""

    def __init__(self, session: Session[Any] | None = None) -> None:
        self.closed = False
        self.session = session or Session(None, True, {})  # auth off: every socket
        self._callbacks: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        if self.closed:
            callback()
        else:
            self._callbacks.append(callback)

    def close(self) -> None:
        self.closed = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass
class FakeKernel:
    config: Config
    data_dir: Path
    loop: asyncio.AbstractEventLoop
    kernel_id: int = 0
    farm_endpoints: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        self.group_commit = GroupCommit(self.loop.call_soon)  # the kernel's, on the test's loop

    def owns(self, slot: int) -> bool:
        return True

    def request_flush(self, flush: Flush) -> None:
        self.group_commit.request(flush)


def wire(value: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(value))


class NetHarness:
    def __init__(self, net: NetSubsystem) -> None:
        self.net = net
        self.methods = {method.name: method for method in net.methods()}

    async def call(self, conn: FakeConnection, method: str, *params: Any) -> Any:
        entry = self.methods[method]
        args = wire(list(params))
        try:
            assert entry.key is not None
            entry.key(args)
            result = entry.handler(conn, *args) if entry.wants_conn else entry.handler(*args)
            if entry.is_async and hasattr(result, "__await__"):  # else answered at once
                result = await result
        except Exception as exc:
            raise from_wire(to_wire(exc)) from exc
        return wire(result)

    def client(self, conn: FakeConnection | None = None) -> AsyncNetApi:
        """``client.net`` over one (fake) client connection."""
        return AsyncNetApi(partial(self.call, conn or FakeConnection()))


@contextmanager
def plain_listener(host: str, kind: int = socket.SOCK_STREAM) -> Iterator[socket.socket]:
    """An ordinary socket bound to ``host`` port 0 (listening, for TCP); closed at exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(8)
        yield sock


async def plain_recvfrom(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, Any]:
    """One datagram from a plain socket without blocking the loop (uvloop has no
    ``sock_recvfrom``)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(sock.fileno())
    data, address = sock.recvfrom(65536)
    return data, address[:2]
