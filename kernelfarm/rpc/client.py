"""Client side of msgpack-rpc over asyncio: many calls in flight on one connection.

Replies are matched to calls by msgid, so they may arrive in any order.  The requests
sent in one turn of the event loop are written together, at the end of the turn, in one
system call: on loopback each ``send`` costs tens of microseconds (the peer's receive path
runs in it), and calls that belong together (a create and its directory's stat, a write
and a chmod) then also reach the server in one read, served in one batch.  When the stream
breaks, every call still waiting fails with the reason (the server's ``rpc.error``
notification if it sent one, else :class:`~kernelfarm.errors.ConnectionLost`), so no caller
waits forever on a dead peer.

A TCP connection (:func:`connect`) receives a reply whose result is one big ``bin`` (a
1 MiB ``fs.pread``) straight into the ``bytearray`` the caller gets
(:class:`StreamingClientConnection`): the socket's bytes are copied once, by the kernel,
where decoding them copied each byte three more times (into a ``bytes`` per read, into the
unpacker's buffer, out into the result).
"""

from __future__ import annotations

import asyncio
import ctypes
import socket
from typing import Any, cast

from kernelfarm.errors import (
    ConnectionLost, KernelfarmError, Timeout, connect_failed, from_wire,
)
from kernelfarm.rpc.protocol import (
    CLIENT_MAX_MESSAGE, ERROR_NOTIFICATION, GATHER_BYTES, MSGID_MAX, Message, Notification,
    Response, RpcStream, classify, encode_request_parts, make_unpacker, stream_error,
)


class RpcClientConnection(asyncio.BaseProtocol):
    """Calls and their replies over one connection, which delivers bytes to
    ``data_received``.  Not an ``asyncio.Protocol``, only shaped like one: uvloop hands
    a subclass its read buffers (``get_buffer``) only if it is no ``Protocol``."""

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

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost fails what is still waiting

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._stream.messages(data)
        except KernelfarmError as exc:
            self._fail(exc)
            return
        self._dispatch(messages)

    def _dispatch(self, messages: list[Message]) -> None:
        for message in messages:
            if isinstance(message, Response):
                if message.error is None:
                    self._answer(message.msgid, message.result)
                    continue
                future = self._pending.pop(message.msgid, None)
                if future is not None and not future.done():
                    future.set_exception(from_wire(message.error))
            elif isinstance(message, Notification):
                if message.method == ERROR_NOTIFICATION:
                    self._fail(from_wire(message.params[0] if message.params else {}))
                else:
                    self.notification(message.method, message.params)

    def notification(self, method: str, params: list[Any]) -> None:
        """Override to take the server's notifications; by default they are ignored."""

    def _answer(self, msgid: int, result: Any) -> None:
        future = self._pending.pop(msgid, None)
        if future is not None and not future.done():
            future.set_result(result)

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
        parts = encode_request_parts(msgid, method, params)  # first: it may refuse them
        self._next_id = (msgid + 1) & MSGID_MAX
        self._pending[msgid] = future
        corked = self._corked
        if not corked:
            loop.call_soon(self._uncork)
        corked += parts
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


BIG_REPLY_BYTES = GATHER_BYTES
"""A reply's ``bin`` result of this many bytes or more is received in place."""

SCRATCH_BYTES = 64 * 1024
"""What one read takes outside a big reply: at most this much of a big reply's bytes
arrives with its header and is copied (once) into its buffer."""


def big_reply(head: memoryview) -> tuple[int, int, int] | None:
    """``(msgid, size, header length)`` if ``head`` starts a response ``[1, msgid, nil,
    bin 32]`` (no error) whose result is ``BIG_REPLY_BYTES`` or more, else ``None``."""
    if len(head) < 3 or head[0] != 0x94 or head[1] != 0x01:
        return None
    tag, at = head[2], 3
    if tag <= 0x7F:
        msgid = tag
    else:
        width = {0xCC: 1, 0xCD: 2, 0xCE: 4}.get(tag)
        if width is None:
            return None
        msgid, at = int.from_bytes(head[3:3 + width], "big"), 3 + width
    if len(head) < at + 6 or head[at] != 0xC0 or head[at + 1] != 0xC6:
        return None
    size = int.from_bytes(head[at + 2:at + 6], "big")
    return (msgid, size, at + 6) if size >= BIG_REPLY_BYTES else None


_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.restype = ctypes.py_object
_new_bytearray.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def unfilled(size: int) -> bytearray:
    """A ``bytearray`` of ``size`` bytes not zeroed first (CPython's C API with no source
    bytes), for a buffer every byte of which is received before anyone reads it:
    ``bytearray(size)`` zeroed each 1 MiB result of a sequential read through the mount
    (6.6% of the mount's CPU there) only for the socket to overwrite it."""
    buffer: bytearray = _new_bytearray(None, size)
    return buffer


class StreamingClientConnection(RpcClientConnection, asyncio.BufferedProtocol):
    """A stream connection that hands the event loop the buffer to read into: its own
    scratch buffer, or, once a big reply's header is in, the rest of that reply's result.

    Only for byte streams: on a ``SOCK_SEQPACKET`` socket a read into a buffer shorter
    than the record would drop the rest of it (the supervisor's control channel stays on
    :class:`RpcClientConnection`)."""

    def __init__(self, max_message_bytes: int = CLIENT_MAX_MESSAGE) -> None:
        super().__init__(max_message_bytes)
        self._max = max_message_bytes
        self._unpacker = make_unpacker(max_message_bytes)
        self._scratch = bytearray(SCRATCH_BYTES)
        self._fed = 0                           # bytes fed to the unpacker so far
        self._boundary = 0                      # where its unfinished message starts
        self._big: bytearray | None = None      # the big result being received
        self._big_msgid = 0
        self._big_filled = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_filled:]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big):
                result, self._big = self._big, None
                self._answer(self._big_msgid, result)
            return
        chunk = memoryview(self._scratch)[:nbytes]
        before, self._fed = self._fed, self._fed + nbytes
        objects = []
        try:
            self._unpacker.feed(chunk)
            for obj in self._unpacker:
                objects.append(obj)
                self._boundary = self._unpacker.tell()
            parsed = self._unpacker.tell() - self._boundary
        except Exception as exc:
            self._fail(stream_error(exc, self._max))
            return
        self._dispatch([classify(obj) for obj in objects])
        if before <= self._boundary < self._fed:  # a message begun in this chunk is unfinished
            self._receive_in_place(chunk[self._boundary - before:], parsed)

    def _receive_in_place(self, head: memoryview, parsed: int) -> None:
        """If ``head`` (an unfinished message, of which the unpacker took ``parsed``
        bytes) is a big reply waiting for the rest of its result, receive that in
        place: the bytes already here are copied into the result, and the unpacker,
        holding the half-parsed message, is replaced by a fresh one."""
        found = big_reply(head)
        if found is None:
            return
        msgid, size, header = found
        if parsed != header or size > self._max:
            return  # not the state this expects (or too big): the unpacker decides
        self._big = unfilled(size)  # every byte is the reply's before it is handed out
        here = head[header:]
        self._big[:len(here)] = here
        self._big_msgid, self._big_filled = msgid, len(here)
        self._unpacker = make_unpacker(self._max)
        self._fed = self._boundary = 0


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
            lambda: StreamingClientConnection(max_message_bytes), sock)
    except OSError as exc:
        sock.close()
        raise connect_failed(exc, host, port) from exc
    except BaseException:
        sock.close()
        raise
    return protocol
