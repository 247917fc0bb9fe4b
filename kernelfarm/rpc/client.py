"""Client side of msgpack-rpc over asyncio: many calls in flight on one connection.

Replies are matched to calls by msgid, so they may arrive in any order.  The requests
sent in one turn of the event loop are written together, at the end of the turn, in one
system call: on loopback each ``send`` costs tens of microseconds (the peer's receive path
runs in it), and calls that belong together (a create and its directory's stat, a write
and a chmod) then also reach the server in one read, served in one batch.  When the stream
breaks, every call still waiting fails with the reason (the server's ``rpc.error``
notification if it sent one, else :class:`~kernelfarm.errors.ConnectionLost`), so no caller
waits forever on a dead peer.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

from kernelfarm.errors import (
    ConnectionLost, KernelfarmError, Timeout, connect_failed, from_wire,
)
from kernelfarm.rpc.protocol import (
    CLIENT_MAX_MESSAGE, ERROR_NOTIFICATION, MSGID_MAX, Notification, Response, RpcStream,
    encode_request_parts,
)


class RpcClientConnection(asyncio.Protocol):
    def __init__(self, max_message_bytes: int = CLIENT_MAX_MESSAGE) -> None:
        self._stream = RpcStream(max_message_bytes)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._failure: Exception | None = None
        self._corked: list[bytes | bytearray] = []  # this turn's requests, not written yet
        self.transport: asyncio.Transport | None = None

    @property
    def closed(self) -> bool:
        return self._failure is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its API.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._stream.messages(data)
        except KernelfarmError as exc:
            self._fail(exc)
            return
        for message in messages:
            if isinstance(message, Response):
                future = self._pending.pop(message.msgid, None)
                if future is None or future.done():
                    continue
                if message.error is None:
                    future.set_result(message.result)
                else:
                    future.set_exception(from_wire(message.error))
            elif isinstance(message, Notification):
                if message.method == ERROR_NOTIFICATION:
                    self._fail(from_wire(message.params[0] if message.params else {}))
                else:
                    self.notification(message.method, message.params)

    def notification(self, method: str, params: list[Any]) -> None:
        """Override to take the server's notifications; by default they are ignored."""

    def connection_lost(self, exc: Exception | None) -> None:
        reason = ConnectionLost(f"connection closed: {exc}" if exc else "connection closed")
        self._fail(reason)

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self._failure)
        if self.transport is not None:
            self.transport.close()

    def send_request(self, method: str, params: list[Any] | tuple[Any, ...]
                     ) -> asyncio.Future[Any]:
        """Send one request now; the future resolves with its result or error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._failure is not None or self.transport is None:
            future.set_exception(self._failure or ConnectionLost("not connected"))
            return future
        msgid = self._next_id
        self._next_id = (msgid + 1) & MSGID_MAX
        self._pending[msgid] = future
        corked = self._corked
        if not corked:
            loop.call_soon(self._uncork)
        corked += encode_request_parts(msgid, method, params)
        return future

    def _uncork(self) -> None:
        """Write this turn's requests with one system call (``writev``)."""
        corked, self._corked = self._corked, []
        if corked and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(corked)

    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        future = self.send_request(method, params)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{method}: no reply within {timeout} s") from None

    def close(self) -> None:
        if self.transport is not None:
            self._uncork()  # the transport writes what it holds before closing
            self.transport.close()


async def connect(host: str, port: int, *, timeout: float | None = 10.0,
                  max_message_bytes: int = CLIENT_MAX_MESSAGE) -> RpcClientConnection:
    """Open a connection to a numeric loopback or remote address (no name lookup)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, protocol = await loop.connect_accepted_socket(
            lambda: RpcClientConnection(max_message_bytes), sock)
    except OSError as exc:
        sock.close()
        raise connect_failed(exc, host, port) from exc
    except BaseException:
        sock.close()
        raise
    return protocol
