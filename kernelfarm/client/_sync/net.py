# Generated from kernelfarm/client/_async/net.py by kernelfarm.client.unasync: do not edit.
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
from typing import Any, Callable


SENDALL_CHUNK = 1024 * 1024
"""Bytes per ``net.send`` in ``sendall``: well under the RPC message limit, large enough
that the per-call cost disappears against the copy."""

RECV_DEFAULT = 64 * 1024

Address = tuple[str, int]


def _with_timeout(params: list[Any], timeout: float | None) -> list[Any]:
    return params if timeout is None else [*params, timeout]


def _address(wire: Any) -> Address:
    return (wire[0], wire[1])


class Socket:
    """A farm socket; a context manager that closes it."""

    def __init__(self, call: Callable[..., Any], ns: str, sid: int,
                 kind: str) -> None:
        self._call = call
        self.ns = ns
        self.sid = sid
        self.kind = kind
        self.closed = False

    def __repr__(self) -> str:
        return f"<farm {self.kind} socket {self.sid} in {self.ns!r}>"

    def connect(self, host: str, port: int, timeout: float | None = None) -> None:
        self._call("net.connect",
                         *_with_timeout([self.ns, self.sid, host, port], timeout))

    def bind(self, host: str, port: int) -> Address:
        return _address(self._call("net.bind", self.ns, self.sid, host, port))

    def listen(self, backlog: int = 128) -> None:
        self._call("net.listen", self.ns, self.sid, backlog)

    def accept(self, timeout: float | None = None) -> tuple[Socket, Address]:
        sid, address = self._call("net.accept",
                                        *_with_timeout([self.ns, self.sid], timeout))
        return Socket(self._call, self.ns, sid, "tcp"), _address(address)

    def send(self, data: bytes | memoryview, timeout: float | None = None) -> int:
        return int(self._call("net.send",
                                    *_with_timeout([self.ns, self.sid, data], timeout)))

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        view = memoryview(data)
        while view:
            sent = self.send(view[:SENDALL_CHUNK], timeout)
            view = view[sent:]

    def recv(self, max: int = RECV_DEFAULT, timeout: float | None = None) -> bytes:
        return bytes(self._call("net.recv",
                                      *_with_timeout([self.ns, self.sid, max], timeout)))

    def sendto(self, data: bytes, address: Address) -> int:
        return int(self._call("net.sendto", self.ns, self.sid, data,
                                    address[0], address[1]))

    def recvfrom(self, max: int = RECV_DEFAULT,
                       timeout: float | None = None) -> tuple[bytes, Address]:
        data, address = self._call("net.recvfrom",
                                         *_with_timeout([self.ns, self.sid, max], timeout))
        return bytes(data), _address(address)

    def shutdown(self, how: int) -> None:
        self._call("net.shutdown", self.ns, self.sid, how)

    def keep(self) -> None:
        """Let the socket outlive this client's connection (a listening socket)."""
        self._call("net.keep", self.ns, self.sid)

    def close(self) -> None:
        """Close; closing twice, or after the kernel closed it, is not an error."""
        if self.closed:
            return
        self.closed = True
        try:
            self._call("net.close", self.ns, self.sid)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NetApi:
    """``client.net``."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def socket(self, ns: str, kind: str = "tcp") -> Socket:
        return Socket(self._call, ns, self._call("net.socket", ns, kind), kind)

    def stats(self, ns: str) -> dict[str, Any]:
        return dict(self._call("net.stats", ns))

    def list(self, ns: str) -> list[dict[str, Any]]:
        return list(self._call("net.list", ns))
