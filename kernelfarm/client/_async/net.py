"""``client.net``: farm sockets that read like Python sockets.

They sit on the client's ``call(method, *params)``, which routes by the first parameter
(the namespace) and raises the matching ``OSError`` for a POSIX error.  A socket object
only remembers its namespace and id; all its state lives in the owning kernel, tied to the
client connection that made it (see :mod:`kernelfarm.net.subsystem`).

``timeout`` arguments left as ``None`` are not sent, so the kernel applies
``net.default_timeout``; the client's own call deadline must be longer than any wait asked
for here.
"""

from __future__ import annotations

import errno
from typing import Any, Awaitable, Callable

from kernelfarm.client.opening import opening  # async only

SENDALL_CHUNK = 1024 * 1024
"""Bytes per ``net.send`` in ``sendall``: well under the RPC message limit, large enough
that the per-call cost disappears against the copy."""

RECV_DEFAULT = 64 * 1024

Address = tuple[str, int]


def _with_timeout(params: list[Any], timeout: float | None) -> list[Any]:
    return params if timeout is None else [*params, timeout]


def _address(wire: Any) -> Address:
    return (wire[0], wire[1])


class AsyncSocket:
    """A farm socket; a context manager that closes it."""

    def __init__(self, call: Callable[..., Awaitable[Any]], ns: str, sid: int,
                 kind: str) -> None:
        self._call = call
        self.ns = ns
        self.sid = sid
        self.kind = kind
        self.closed = False

    def __repr__(self) -> str:
        return f"<farm {self.kind} socket {self.sid} in {self.ns!r}>"

    async def connect(self, host: str, port: int, timeout: float | None = None) -> None:
        await self._call("net.connect",
                         *_with_timeout([self.ns, self.sid, host, port], timeout))

    async def bind(self, host: str, port: int) -> Address:
        return _address(await self._call("net.bind", self.ns, self.sid, host, port))

    async def listen(self, backlog: int = 128) -> None:
        await self._call("net.listen", self.ns, self.sid, backlog)

    async def accept(self, timeout: float | None = None) -> tuple[AsyncSocket, Address]:
        sid, address = await self._call("net.accept",
                                        *_with_timeout([self.ns, self.sid], timeout))
        return AsyncSocket(self._call, self.ns, sid, "tcp"), _address(address)

    async def send(self, data: bytes | memoryview, timeout: float | None = None) -> int:
        return int(await self._call("net.send",
                                    *_with_timeout([self.ns, self.sid, data], timeout)))

    async def sendall(self, data: bytes, timeout: float | None = None) -> None:
        view = memoryview(data)
        while view:
            sent = await self.send(view[:SENDALL_CHUNK], timeout)
            view = view[sent:]

    async def recv(self, max: int = RECV_DEFAULT, timeout: float | None = None) -> bytes:
        return bytes(await self._call("net.recv",
                                      *_with_timeout([self.ns, self.sid, max], timeout)))

    async def sendto(self, data: bytes, address: Address) -> int:
        return int(await self._call("net.sendto", self.ns, self.sid, data,
                                    address[0], address[1]))

    async def recvfrom(self, max: int = RECV_DEFAULT,
                       timeout: float | None = None) -> tuple[bytes, Address]:
        data, address = await self._call("net.recvfrom",
                                         *_with_timeout([self.ns, self.sid, max], timeout))
        return bytes(data), _address(address)

    async def shutdown(self, how: int) -> None:
        await self._call("net.shutdown", self.ns, self.sid, how)

    async def keep(self) -> None:
        """Let the socket outlive this client's connection (a listening socket)."""
        await self._call("net.keep", self.ns, self.sid)

    async def close(self) -> None:
        """Close; closing twice, or after the kernel closed it, is not an error."""
        if self.closed:
            return
        self.closed = True
        try:
            await self._call("net.close", self.ns, self.sid)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise

    async def __aenter__(self) -> AsyncSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AsyncNetApi:
    """``client.net``."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self._call = call

    @opening  # async only: `async with farm.net.socket(...)` needs no `await` first
    async def socket(self, ns: str, kind: str = "tcp") -> AsyncSocket:
        return AsyncSocket(self._call, ns, await self._call("net.socket", ns, kind), kind)

    async def stats(self, ns: str) -> dict[str, Any]:
        return dict(await self._call("net.stats", ns))

    async def list(self, ns: str) -> list[dict[str, Any]]:
        return list(await self._call("net.list", ns))
