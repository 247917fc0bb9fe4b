"""The asyncio side of serving msgpack-rpc: one protocol object per connection.

Per read, every complete request is decoded with the C unpacker and answered into one
``Packer(autoreset=False)`` buffer written with a single ``write()``: on the kernel's fast
path the per-request Python work is the budget, not the socket.  The service decides what a
request means (:class:`Service`); this module only owns the stream: pipelining, out-of-order
replies of waiting handlers, the per-connection in-flight limit and write-buffer limit that
pause reading (backpressure), and closing a stream that cannot be decoded.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, cast

import msgpack

from kernelfarm.errors import KernelfarmError, ProtocolError, to_wire
from kernelfarm.rpc.meter import Meter
from kernelfarm.rpc.protocol import (
    ERROR_NOTIFICATION, Malformed, Notification, classify, make_unpacker, stream_error,
)

if TYPE_CHECKING:
    from kernelfarm.config import RpcConfig

log = logging.getLogger(__name__)


class Service(Protocol):
    """What a server connection delegates to."""

    def handle(self, conn: ServerConnection, msgid: int, method: str,
               params: list[Any]) -> list[Any] | None:
        """Answer now with ``[1, msgid, error, result]``, or return ``None`` after
        handing a waiting call to :meth:`ServerConnection.start_call`."""
        ...

    def send(self, conn: ServerConnection, data: bytes) -> None:
        """Write replies; a kernel holds them here until a group commit is durable."""
        ...

    def connection_made(self, conn: ServerConnection) -> None: ...

    def connection_closed(self, conn: ServerConnection) -> None: ...


class ServerConnection(asyncio.Protocol):
    """One client connection: decode, dispatch, reply, and push back when overloaded."""

    def __init__(self, service: Service, *, max_message_bytes: int, max_inflight: int,
                 write_buffer_bytes: int, meter: Meter | None = None) -> None:
        self.service = service
        self.meter = meter if meter is not None else Meter()
        self.max_message_bytes = max_message_bytes
        self.max_inflight = max_inflight
        self.write_buffer_bytes = write_buffer_bytes
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.inflight = 0
        self.closed = False
        self._unpacker = make_unpacker(max_message_bytes)
        self._packer = msgpack.Packer(autoreset=False)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_callbacks: list[Callable[[], None]] = []
        self._reading_paused = False
        self._writing_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its API.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.transport.set_write_buffer_limits(high=self.write_buffer_bytes)
        self.service.connection_made(self)

    def data_received(self, data: bytes) -> None:
        self.meter.bytes_in += len(data)
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull as exc:
            self._fail_stream(stream_error(exc, self.max_message_bytes))
            return
        self._process()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("close callback failed for %s", self.peer)
        self.service.connection_closed(self)

    # -- what handlers and services use --------------------------------------------------

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when this connection goes away (net sockets tied to it)."""
        if self.closed:
            callback()
        else:
            self._close_callbacks.append(callback)

    def start_call(self, msgid: int, awaitable: Awaitable[Any]) -> None:
        """Serve a waiting call in its own task; its reply may overtake earlier ones."""
        task = asyncio.ensure_future(awaitable)
        self.inflight += 1
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finish_call(msgid, t))

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- internals -----------------------------------------------------------------------

    def _process(self) -> None:
        """Handle every complete message buffered, stopping at the in-flight limit."""
        started = perf_counter()
        handle = self.service.handle
        unpacker = self._unpacker
        replies: list[list[Any]] = []
        while self.inflight < self.max_inflight:
            try:
                obj = next(unpacker)
            except StopIteration:
                break
            except Exception as exc:
                self._send_replies(replies)
                self._fail_stream(stream_error(exc, self.max_message_bytes))
                return
            if (type(obj) is list and len(obj) == 4 and obj[0] == 0
                    and type(obj[1]) is int and type(obj[2]) is str
                    and type(obj[3]) is list):
                reply = handle(self, obj[1], obj[2], obj[3])
                if reply is not None:
                    replies.append(reply)
            else:
                self._odd_message(obj, replies)
        if replies:
            self._send_replies(replies)
            self.meter.batch(len(replies), perf_counter() - started)
        self._update_reading()

    def _odd_message(self, obj: Any, replies: list[list[Any]]) -> None:
        message = classify(obj)
        if isinstance(message, Notification):
            return  # nothing to answer; kernels define no client notifications
        if isinstance(message, Malformed):
            reason, msgid = message.reason, message.msgid
        else:
            reason, msgid = "a server does not take responses", None
        error = ProtocolError(reason).to_wire()
        if msgid is None:
            self.write(msgpack.packb([2, ERROR_NOTIFICATION, [error]]))
        else:
            replies.append([1, msgid, error, None])

    def _send_replies(self, replies: list[list[Any]]) -> None:
        if not replies:
            return
        packer = self._packer
        try:
            for reply in replies:
                packer.pack(reply)
        except Exception:
            # The packer discards its whole buffer when one object fails: pack again,
            # turning each unpackable result into an error instead.
            for reply in replies:
                try:
                    packer.pack(reply)
                except Exception as exc:
                    error = to_wire(TypeError(f"result cannot be encoded: {exc}"))
                    packer.pack([1, reply[1], error, None])
        data = packer.bytes()
        packer.reset()
        self.meter.bytes_out += len(data)
        self.service.send(self, data)

    def _finish_call(self, msgid: int, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self.inflight -= 1
        if self.closed or task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            reply = [1, msgid, None, task.result()]
        else:
            if not isinstance(exc, (OSError, KernelfarmError, TypeError, ValueError)):
                log.error("handler failed", exc_info=exc)
            reply = [1, msgid, to_wire(exc), None]
        self._send_replies([reply])
        if self._reading_paused and self.inflight < self.max_inflight:
            self._process()  # messages left buffered when the limit was hit

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        want_pause = self._writing_paused or self.inflight >= self.max_inflight
        if want_pause and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        elif not want_pause and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _fail_stream(self, error: KernelfarmError) -> None:
        """The stream cannot be resynchronised: say why (no msgid to answer), then close."""
        log.info("closing connection from %s: %s", self.peer, error.message)
        self.write(msgpack.packb([2, ERROR_NOTIFICATION, [error.to_wire()]]))
        self.close()


def connection_factory(service: Service, rpc: RpcConfig, meter: Meter | None = None
                       ) -> Callable[[], ServerConnection]:
    """The protocol factory for ``create_server``/``connect_accepted_socket``, with the
    ``[rpc]`` limits; the supervisor's control port and every kernel serve through it.
    Connections sharing ``meter`` count their traffic in it (a kernel's public listener)."""
    return lambda: ServerConnection(
        service, max_message_bytes=rpc.max_message_bytes, max_inflight=rpc.max_inflight,
        write_buffer_bytes=rpc.write_buffer_bytes, meter=meter)
