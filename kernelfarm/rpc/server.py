"""The asyncio side of serving msgpack-rpc: one protocol object per connection.

Framing lives in :class:`~kernelfarm.rpc.protocol.ServerStream` (no I/O); this module only
moves bytes.  Per read, every complete request is decoded with the C unpacker and the
replies are encoded in one call (:func:`~kernelfarm.rpc.protocol.encode_replies`) and
written with a single ``write()``: on the
kernel's fast path the per-request Python work is the budget, not the socket.  The service
decides what a request means (:class:`Service`).

Every resource a connection can make the server spend is bounded and accounted here:

- reply bytes queued in the transport, being produced by the current batch, or reserved
  by waiting calls (a ``net.recv`` reserves its max until its reply is written): over
  ``write_buffer_bytes`` the connection stops reading and starts no new request until the
  client has read enough or the waiting calls answered (a client that pipelines reads of
  big files, or recvs of big sockets, and never reads);
- requests in flight (``max_inflight``): reading stops until one finishes;
- malformed messages: a few are answered, then one error notification and the connection
  is closed (a flood of nil bytes costs a few replies, not one per byte);
- connections per listener (``max_connections``): one more is refused with an error
  notification, so descriptors stay for the journals and sockets the kernel needs (or it
  takes the place of the oldest that never said who it is: :class:`ConnectionLimit`);
- the loop: one connection is served at most ``turn_bytes`` of requests (or
  ``turn_seconds`` of slow ones) per loop turn, then the others, then its rest.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from bisect import bisect_left
from time import perf_counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, cast

import msgpack

from kernelfarm.errors import KernelfarmError, posix, to_wire
from kernelfarm.ratelog import RateLimitedLog
from kernelfarm.rpc.answer import Answer
from kernelfarm.rpc.meter import LATENCY_BOUNDS, Meter, Usage
from kernelfarm.rpc.protocol import (
    ERROR_NOTIFICATION, TURN_BYTES, TURN_SECONDS, ServerStream, Wire, encode_replies,
)

if TYPE_CHECKING:
    from kernelfarm.config import RpcConfig

log = logging.getLogger(__name__)
complaints = RateLimitedLog(log)
"""Lines about what clients got wrong: rate-limited, one line each, never a traceback."""


class Service(Protocol):
    """What a server connection delegates to."""

    def handle(self, conn: ServerConnection, msgid: int, method: str,
               params: Sequence[Any]) -> list[Any] | None:
        """Answer now with ``[1, msgid, error, result]``, or return ``None`` after
        handing a waiting call to :meth:`ServerConnection.start_call`.  ``params`` is a
        list, or a tuple on a connection made with ``tuples``."""
        ...

    def send(self, conn: ServerConnection, data: Wire) -> None:
        """Write replies; a kernel holds them here until a group commit is durable."""
        ...

    def fault(self, exc: BaseException) -> dict[str, Any]:
        """The error a waiting call that raised ``exc`` answers with (logged if a bug)."""
        ...

    def connection_made(self, conn: ServerConnection) -> None: ...

    def connection_closed(self, conn: ServerConnection) -> None: ...


class Unbound:
    """The session of a connection its service has not bound yet: counts go nowhere."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage = Usage()


class ConnectionLimit:
    """How many connections one listener serves at once (``rpc.max_connections``).

    With ``evictable`` (a connection that has not said who it is, while auth is required),
    a full listener makes room for a new connection by closing the oldest evictable one:
    idle connections that never say ``auth.hello`` cost nothing to open, and held by the
    thousand they shut every real client out.  One served by another loop (a locked
    kernel's other thread) is closed by that loop."""

    __slots__ = ("maximum", "admitted", "evictable")

    def __init__(self, maximum: int,
                 evictable: Callable[[ServerConnection], bool] | None = None) -> None:
        self.maximum = maximum
        self.admitted: dict[ServerConnection, asyncio.AbstractEventLoop] = {}
        """Open connections, oldest first, with the loop that serves each."""
        self.evictable = evictable

    @property
    def open(self) -> int:
        return len(self.admitted)

    def take(self, conn: ServerConnection) -> bool:
        loop = asyncio.get_running_loop()
        if len(self.admitted) >= self.maximum and not self._evict(loop):
            return False
        self.admitted[conn] = loop
        return True

    def _evict(self, loop: asyncio.AbstractEventLoop) -> bool:
        evictable = self.evictable
        if evictable is None:
            return False
        # A copy: a locked kernel's threads share the listener, and its other threads may
        # admit or release connections meanwhile.
        for conn, served_by in list(self.admitted.items()):
            if evictable(conn) and self.admitted.pop(conn, None) is not None:
                if served_by is loop:  # its connection_lost gives nothing back
                    conn.evict()
                else:
                    served_by.call_soon_threadsafe(conn.evict)
                return True
        return False

    def give_back(self, conn: ServerConnection) -> None:
        self.admitted.pop(conn, None)


class ServerConnection(asyncio.Protocol):
    """One client connection: decode, dispatch, reply, and push back when overloaded."""

    def __init__(self, service: Service, *, max_message_bytes: int, max_inflight: int,
                 write_buffer_bytes: int, meter: Meter | None = None,
                 connections: ConnectionLimit | None = None, tuples: bool = False,
                 turn_bytes: int = TURN_BYTES, turn_seconds: float = TURN_SECONDS) -> None:
        self.service = service
        self._handle = service.handle
        self._send = service.send
        self.write: Callable[[Wire], None] = _unsent
        """Write bytes to the client: the transport's own ``write`` while the connection
        is open (no Python frame between a service's reply and the socket), nothing
        before it is made or after it is lost."""
        self.meter = meter if meter is not None else Meter()
        self.max_message_bytes = max_message_bytes
        self.max_inflight = max_inflight
        self.write_buffer_bytes = write_buffer_bytes
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.inflight = 0
        self.reserved = 0
        """Reply bytes promised to waiting calls (:meth:`start_call`) until their replies
        are written; :class:`ServerStream` counts a new one as produced by its batch."""
        self._releasing = 0
        self.closed = False
        self._stream = ServerStream(max_message_bytes, tuples, turn_bytes=turn_bytes,
                                    turn_seconds=turn_seconds)
        self.session: Any = Unbound()
        """Who the peer is and what it may call (:mod:`kernelfarm.auth.gate`); the service
        sets it when the connection is made.  Its ``usage`` counts the connection's
        requests, errors and bytes for the tenant (per read and per batch of replies)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_callbacks: list[Callable[[], None]] = []
        self._connections = connections
        self._admitted = False
        self._done = False  # no more input is served: failed, refused or closing
        self._backlog = False  # input left buffered when a bound stopped the last batch
        self._scheduled = False
        self._finished: list[list[Any]] = []
        """Replies of waiting calls that ended in this loop turn: they leave in one write."""
        self._reading_paused = False
        self._writing_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its API.
        self.transport = cast(asyncio.Transport, transport)
        self.write = self.transport.write
        self.peer = transport.get_extra_info("peername")
        self.transport.set_write_buffer_limits(high=self.write_buffer_bytes)
        limit = self._connections
        if limit is not None and not limit.take(self):
            complaints.log(logging.WARNING, "refused a connection from %s: %d connections "
                           "open (rpc.max_connections)", self.peer, limit.open)
            self._fail_stream(posix_error(errno.EMFILE, (
                f"this kernel serves rpc.max_connections={limit.maximum} connections at "
                "once; close one or try again later")))
            return
        self._admitted = True
        self.service.connection_made(self)

    def data_received(self, data: bytes) -> None:
        """Take ``data`` in, serve what is buffered within the connection's bounds, write
        the replies, then set reading.  Called with ``b""`` (:meth:`_process`) to go on
        with what a bound left buffered.

        The fast path -- a read of requests that hits no bound -- is this frame, the
        stream's ``serve`` (decode, dispatch, encode) and the service's ``send``, as the
        echo floor is one frame: a Python frame per read costs about 450 instructions.
        """
        size = len(data)
        meter = self.meter
        meter.bytes_in += size
        self.session.usage.bytes_in += size
        transport = self.transport
        if self._done or transport is None:
            return
        room = self.max_inflight - self.inflight
        reserved = self.reserved
        budget = self.write_buffer_bytes - transport.get_write_buffer_size() - reserved
        if budget <= 0 and reserved:
            # Waiting calls hold the room; each gives its share back when its reply is
            # written (_send_finished), and serving resumes then.
            self._backlog = True
            if size and not self._take(data):
                return
        elif not self._writing_paused and room > 0:
            # At least one byte of budget: a connection not paused always makes progress,
            # and the transport pauses it as soon as its buffer goes over the bound.
            if budget < 1:
                budget = 1
            started = perf_counter()
            batch = self._stream.serve(self._handle, self, room, budget, data)
            replies = batch.replies
            if replies:
                wire = batch.wire
                if wire is None:
                    wire = self._encode_each(replies)
                count = len(replies)
                size = len(wire)
                meter.bytes_out += size
                usage = self.session.usage  # the batch's auth.hello may have changed it
                usage.ops += count
                usage.bytes_out += size
                self._send(self, wire)
                # Meter's histogram, inlined: the batch's time, weighted by its size.
                seconds = perf_counter() - started
                meter.buckets[bisect_left(LATENCY_BOUNDS, seconds)] += count
                meter.seconds += seconds * count
            if batch.notices:
                for notice in batch.notices:
                    self.write(msgpack.packb(notice))
            if batch.fatal is not None:
                self._fail_stream(batch.fatal.to_wire())
                return
            self._backlog = more = batch.more
            if more and self.inflight < self.max_inflight and not self._scheduled:
                # Stopped on the turn's bound, or on the reply bytes (not on the calls
                # that may wait, which go on as they end): go on next loop turn, after
                # the other connections' reads and once this turn's replies are written
                # (after the group commit, which was scheduled before us).
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._process)
        elif size and not self._take(data):
            return
        if (self._reading_paused or self._backlog or self._writing_paused
                or self.inflight >= self.max_inflight):
            self._update_reading()  # nothing to change unless one of these holds

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.write = _unsent
        self._done = True
        if not self._admitted:
            return
        if self._connections is not None:
            self._connections.give_back(self)
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

    def start_call(self, msgid: int, awaitable: Awaitable[Any], reserve: int = 0) -> None:
        """Serve a waiting call; its reply may overtake earlier ones.  An
        :class:`~kernelfarm.rpc.answer.Answer` comes straight to :meth:`answered` when it
        is settled; anything else is awaited in its own task.  ``reserve``: the most bytes
        its reply may carry, held in the write buffer's account until the reply is
        written."""
        self.inflight += 1
        self.reserved += reserve
        if isinstance(awaitable, Answer):
            awaitable.deliver_to(self, msgid, reserve)
            return
        self._await_call(msgid, awaitable, reserve)

    def _await_call(self, msgid: int, awaitable: Awaitable[Any], reserve: int) -> None:
        """A waiting call that is not an Answer, in its own task.  Apart from
        :meth:`start_call` because of its callback's closure: a function with one makes
        its cells at every call, which the Answer path (a waiting ``net.recv``) need not
        pay."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finish_call(msgid, reserve, t))

    def close(self) -> None:
        self._done = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- internals -----------------------------------------------------------------------

    def _process(self) -> None:
        """Serve what a bound left buffered (its bound has gone)."""
        self._scheduled = False
        self.data_received(b"")

    def _take(self, data: bytes) -> bool:
        """Buffer ``data`` without serving it (a bound holds the connection); ``False``
        when the stream failed on it."""
        try:
            self._stream.feed(data)
        except KernelfarmError as exc:
            self._fail_stream(exc.to_wire())
            return False
        return True

    def _send_replies(self, replies: list[list[Any]]) -> None:
        """Write the replies of waiting calls (a read's own are written by
        :meth:`data_received`)."""
        try:
            wire = encode_replies(replies)
        except Exception:
            wire = self._encode_each(replies)
        size = len(wire)
        self.meter.bytes_out += size
        usage = self.session.usage
        usage.ops += len(replies)
        usage.bytes_out += size
        self._send(self, wire)

    def _encode_each(self, replies: list[list[Any]]) -> bytes:
        """The replies, when one result cannot be encoded: one by one, each such result
        turned into an error instead."""
        return b"".join([self._encode_alone(reply) for reply in replies])

    @staticmethod
    def _encode_alone(reply: list[Any]) -> Wire:
        try:
            return encode_replies([reply])
        except Exception as exc:
            error = to_wire(TypeError(f"result cannot be encoded: {exc}"))
            return encode_replies([[1, reply[1], error, None]])

    def _finish_call(self, msgid: int, reserve: int, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():  # the connection closed
            self.inflight -= 1
            self.reserved -= reserve
            return
        error = task.exception()
        self.answered(msgid, reserve, None if error is not None else task.result(), error)

    def answered(self, msgid: int, reserve: int, result: Any,
                 error: BaseException | None) -> None:
        """A waiting call's reply: it leaves with the others of this loop turn, in one
        write, and its reservation goes when that write is made."""
        self.inflight -= 1
        if self.closed:
            self.reserved -= reserve
            return
        if error is None:
            reply = [1, msgid, None, result]
        else:
            reply = [1, msgid, self.service.fault(error), None]
            self.session.usage.errors += 1
        finished = self._finished
        finished.append(reply)
        self._releasing += reserve
        if len(finished) == 1:
            asyncio.get_running_loop().call_soon(self._send_finished)

    def _send_finished(self) -> None:
        finished, self._finished = self._finished, []
        if not self.closed and finished:
            self._send_replies(finished)
        # Written (or held for the group commit, one turn): the transport's buffer
        # counts these replies now, so their reservations go.
        self.reserved -= self._releasing
        self._releasing = 0
        if self._reading_paused:
            self._process()  # messages left buffered when a bound was hit

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        want_pause = (self._writing_paused or self._backlog
                      or self.inflight >= self.max_inflight)
        if want_pause and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        elif not want_pause and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def evict(self) -> None:
        """Closed to make room (:class:`ConnectionLimit`): say so, as to one refused."""
        self._fail_stream(posix_error(errno.EMFILE, (
            "closed to make room for a new connection: rpc.max_connections are open and "
            "this one has not said who it is (auth.hello)")))

    def _fail_stream(self, error: dict[str, Any]) -> None:
        """The stream cannot go on: say why (there is no msgid to answer), then close."""
        complaints.log(logging.INFO, "closing connection from %s: %s", self.peer,
                       error.get("message"))
        self.write(msgpack.packb([2, ERROR_NOTIFICATION, [error]]))
        self.close()


def _unsent(data: Wire) -> None:
    """A connection's ``write`` while it has no transport: replies to a client that is
    gone are dropped."""


def connection_factory(service: Service, rpc: RpcConfig, meter: Meter | None = None,
                       limit: ConnectionLimit | None = None, tuples: bool = False
                       ) -> Callable[[], ServerConnection]:
    """The protocol factory for ``create_server``/``connect_accepted_socket``, with the
    ``[rpc]`` limits; the supervisor's control port and every kernel serve through it.
    Connections sharing ``meter`` count their traffic in it (a kernel's public listener);
    ``limit`` is shared by every connection of one listener (``rpc.max_connections``);
    ``tuples``: params arrive as tuples (:class:`~kernelfarm.rpc.protocol.ServerStream`)."""
    return lambda: ServerConnection(
        service, max_message_bytes=rpc.max_message_bytes, max_inflight=rpc.max_inflight,
        write_buffer_bytes=rpc.write_buffer_bytes, meter=meter, connections=limit,
        tuples=tuples, turn_bytes=rpc.turn_bytes, turn_seconds=rpc.turn_seconds)


def posix_error(code: int, message: str) -> dict[str, Any]:
    return to_wire(posix(code, message))
