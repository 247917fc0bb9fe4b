"""msgpack-rpc without I/O: bytes in, messages out; messages in, bytes out.

The wire is the msgpack-rpc specification, so any msgpack-rpc client in any language can
talk to a kernel: request ``[0, msgid, method, params]``, response ``[1, msgid, error,
result]``, notification ``[2, method, params]``, as a plain stream of msgpack objects with
str as str and bytes as bin.  Keeping this free of sockets makes it testable and fuzzable
with plain byte strings; the asyncio adapters in :mod:`kernelfarm.rpc.server` and
:mod:`kernelfarm.rpc.client` only move bytes.

A stream we cannot decode (garbage, or a message over the size limit) cannot be resynchronised,
so it raises :class:`~kernelfarm.errors.ProtocolError` / :class:`~kernelfarm.errors.MessageTooBig`
and the connection is closed.  A message that decodes but is not valid msgpack-rpc is
reported per message, with its msgid when one can be found, and the stream goes on.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from time import perf_counter
from typing import Any, Callable, Iterator, NamedTuple

import msgpack
import msgspec

from kernelfarm.errors import (
    InvalidParameter, MessageTooBig, ProtocolError, internal_error, preview,
)

ERROR_NOTIFICATION = "rpc.error"
"""Notification a server sends before closing a stream it cannot decode (no msgid to answer)."""


class MessageType(enum.IntEnum):
    REQUEST = 0
    RESPONSE = 1
    NOTIFICATION = 2


class Request(NamedTuple):
    msgid: int
    method: str
    params: list[Any]


class Response(NamedTuple):
    msgid: int
    error: Any
    result: Any


class Notification(NamedTuple):
    method: str
    params: list[Any]


class Malformed(NamedTuple):
    """A decoded object that is not a valid msgpack-rpc message."""

    msgid: int | None
    reason: str


Message = Request | Response | Notification | Malformed

MSGID_MAX = 2**32 - 1

CLIENT_MAX_MESSAGE = 64 * 1024 * 1024
"""Largest reply a client takes; above any server's ``rpc.max_message_bytes`` default."""


def make_unpacker(max_message_bytes: int) -> msgpack.Unpacker:
    """An unpacker that refuses any single object larger than ``max_message_bytes``."""
    return msgpack.Unpacker(raw=False, max_buffer_size=max_message_bytes,
                            strict_map_key=False)


ARRAYS = (list, tuple)
"""What a msgpack array decodes to: a list, or a tuple from a stream that asked for
tuples (:class:`ServerStream`)."""


def classify(obj: Any) -> Message:
    """Check one decoded object against the msgpack-rpc message shapes."""
    if type(obj) not in ARRAYS or not obj:
        return Malformed(None, "a message must be a non-empty array")
    kind = obj[0]
    if kind == MessageType.REQUEST and type(kind) is int:
        if len(obj) != 4:
            return Malformed(_msgid(obj), "a request is [0, msgid, method, params]")
        _, msgid, method, params = obj
        if type(msgid) is not int or not 0 <= msgid <= MSGID_MAX:
            return Malformed(None, "msgid must be an unsigned 32-bit integer")
        if type(method) is not str:
            return Malformed(msgid, "method must be a string")
        if type(params) not in ARRAYS:
            return Malformed(msgid, "params must be an array")
        return Request(msgid, method, list(params))
    if kind == MessageType.RESPONSE and type(kind) is int:
        if len(obj) != 4 or type(obj[1]) is not int:
            return Malformed(None, "a response is [1, msgid, error, result]")
        return Response(obj[1], obj[2], obj[3])
    if kind == MessageType.NOTIFICATION and type(kind) is int:
        if len(obj) != 3 or type(obj[1]) is not str or type(obj[2]) not in ARRAYS:
            return Malformed(None, "a notification is [2, method, params]")
        return Notification(obj[1], list(obj[2]))
    return Malformed(_msgid(obj), f"unknown message type {preview(kind)}")


def _msgid(obj: Sequence[Any]) -> int | None:
    if len(obj) > 1 and type(obj[1]) is int and 0 <= obj[1] <= MSGID_MAX:
        return obj[1]
    return None


class RpcStream:
    """Decodes one direction of a connection: ``feed(data)`` then iterate the messages."""

    __slots__ = ("_unpacker", "max_message_bytes")

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._unpacker = make_unpacker(max_message_bytes)

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull as exc:
            raise stream_error(exc, self.max_message_bytes) from exc

    def __iter__(self) -> Iterator[Any]:
        """Decoded objects, raw; pair with :func:`classify` (the kernel inlines the check)."""
        return self

    def __next__(self) -> Any:
        try:
            return next(self._unpacker)
        except StopIteration:
            raise
        except Exception as exc:
            raise stream_error(exc, self.max_message_bytes) from exc

    def messages(self, data: bytes) -> list[Message]:
        """Feed ``data`` and return every complete message, classified."""
        self.feed(data)
        return [classify(obj) for obj in self]


def too_big(max_message_bytes: int) -> MessageTooBig:
    """The error of a message over the size limit (``E2BIG``), in one wording."""
    return MessageTooBig(f"message over the {max_message_bytes}-byte limit")


def stream_error(exc: Exception, max_message_bytes: int) -> ProtocolError:
    """Translate what msgpack raises on a broken stream into the farm's error."""
    if isinstance(exc, msgpack.BufferFull) or (
            isinstance(exc, ValueError) and "exceeds max" in str(exc)):
        # The second form is raised for a declared str/bin/array longer than the limit.
        return too_big(max_message_bytes)
    return ProtocolError(f"undecodable msgpack stream: {type(exc).__name__}: {exc}")


def encode_request(msgid: int, method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
    """A request's bytes; parameters msgpack cannot carry (an int past 64 bits, an object
    of no msgpack type, nesting too deep) are the caller's ``EINVAL``, naming the method,
    not msgpack's bare ``OverflowError`` (which the command line showed as a traceback)."""
    try:
        data: bytes = msgpack.packb([MessageType.REQUEST, msgid, method, list(params)])
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidParameter(f"{preview(method)}: cannot encode its parameters: {exc}"
                               ) from exc
    return data


GATHER_BYTES = 64 * 1024
"""A request's last parameter of this many bytes or more is never copied into it."""


def encode_request_parts(msgid: int, method: str, params: list[Any] | tuple[Any, ...]
                         ) -> list[bytes | bytearray]:
    """:func:`encode_request`'s bytes in parts, for a ``writev``: a big ``bytes`` last
    parameter (a 1 MiB ``fs.pwrite``) is a part of its own, after its ``bin 32`` header,
    instead of being copied into the message."""
    data = params[-1] if params else None
    if not isinstance(data, (bytes, bytearray)) or len(data) < GATHER_BYTES:
        return [encode_request(msgid, method, params)]
    head = encode_request(msgid, method, [*params[:-1], b""])  # ends in bin 8, length 0
    return [head[:-2] + b"\xc6" + len(data).to_bytes(4, "big"), data]


def encode_response(msgid: int, error: Any, result: Any) -> bytes:
    data: bytes = msgpack.packb([MessageType.RESPONSE, msgid, error, result])
    return data


def encode_notification(method: str, params: list[Any]) -> bytes:
    data: bytes = msgpack.packb([MessageType.NOTIFICATION, method, params])
    return data


def _plain(obj: Any) -> Any:
    """What msgpack's packer does with a subclass of ``str`` or ``bytes``: its plain value
    (msgspec takes the other subclasses msgpack takes: enums, dicts, lists, tuples)."""
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    raise TypeError(f"cannot encode objects of type {type(obj).__name__}")


_encode = msgspec.msgpack.Encoder(enc_hook=_plain).encode


Wire = bytes | memoryview
"""Encoded messages as one write sends them: a big batch of replies is a view
(:func:`encode_replies`), so what passes them on takes either."""


def encode_replies(replies: list[list[Any]]) -> Wire:
    """The replies, one msgpack object each, back to back: the bytes one write sends.

    A server's replies are encoded with msgspec, in one call for the whole batch: the
    list is encoded as one array and its header cut off (what is left is the replies,
    each exactly the object msgpack would pack; same wire).  For a batch of ``fs.stat``
    replies that is about a third of msgpack's ``Packer.pack`` per reply, and a result
    that is already encoded (a ``msgspec.Raw``, such as a cached stat) is copied as is.
    Raises what the encoder raises if one result cannot be encoded (the batch is lost:
    encode each reply alone to find it).

    A batch of :data:`GATHER_BYTES` or more (a 1 MiB ``fs.pread`` reply) comes back as a
    view past the header, so its data is copied once, by the encoder, and not again by
    the cut; a small batch is cut by slicing, which costs less than making a view.
    """
    count = len(replies)
    data = _encode(replies)
    header = 1 if count < 16 else 3 if count < 0x10000 else 5
    if len(data) < GATHER_BYTES:
        return data[header:]
    return memoryview(data)[header:]


# -- the server side of a connection ----------------------------------------------------------

MAX_PROTOCOL_ERRORS = 8
"""Malformed messages answered on one connection; the next one closes it (a nil flood)."""

READ_SLACK = 1024 * 1024
"""Room above ``max_message_bytes`` in the unpacker for the next read (uvloop reads 256 KiB),
so a message right at the limit followed by the start of the next one is not refused."""

TURN_BYTES = 16 * 1024
"""Input one connection is served per loop turn before it yields (at least one message):
a client that pipelines thousands of requests in one read is served in slices, and the
kernel's other connections are served in between.  About 0.7 ms of ``fs.stat``."""

TURN_SECONDS = 0.002
"""Time one connection is served per loop turn when its requests are slow (volume
creations that fsync): checked per message only on a read of more than
:data:`TURN_WATCH_BYTES`, so a read that fits pays nothing for it."""

TURN_WATCH_BYTES = 2 * 1024
"""A read of more than this (about 50 small requests; a client with 16 in flight sends
0.5-1 KiB) is served watching the clock, one ``perf_counter()`` per message."""

Handler = Callable[[Any, int, str, Sequence[Any]], "list[Any] | None"]
"""``handle(conn, msgid, method, params)``: a reply now, or ``None`` for a waiting call.
``params`` is a list, or a tuple from a stream made with ``tuples``."""


class Batch:
    """What one :meth:`ServerStream.serve` produced: replies, notifications, and why it stopped.

    One per stream, reused by each ``serve`` (a fresh object per read cost as much as
    decoding a request): read it before serving again.
    """

    __slots__ = ("replies", "wire", "notices", "produced", "more", "fatal")

    def __init__(self) -> None:
        self.replies: list[list[Any]] = []
        self.wire: Wire | None = None
        """``replies`` encoded (:func:`encode_replies`); ``None`` when there are none or
        one result cannot be encoded (then encode them one by one to find it)."""
        self.notices: list[list[Any]] = []
        """Error notifications for malformed messages that carry no msgid."""
        self.produced = 0
        """Bytes of ``bytes`` results in ``replies``: the replies this batch is producing."""
        self.more = False
        """Complete or partial input is still buffered: a bound stopped the batch (the
        calls that may wait, the reply bytes, or the turn's: :data:`TURN_BYTES`,
        :data:`TURN_SECONDS`)."""
        self.fatal: ProtocolError | None = None
        """The stream cannot go on: send this as an error notification, then close."""


class ServerStream:
    """The server side of one connection without I/O: bytes in, requests dispatched.

    Holds the bounds a connection enforces on its input: the exact message size
    (``max_message_bytes``; one byte over is ``E2BIG``) and how many malformed messages
    are answered before the stream is given up (:data:`MAX_PROTOCOL_ERRORS`).  The
    request check is inlined in :meth:`serve` for speed (it is the kernel's fast path);
    everything that fails it goes through :func:`classify`, the one definition of a
    message's shape.  One difference, on purpose: the fast check takes any ``int`` msgid,
    not only the spec's ``0 .. 2**32 - 1``.  The range costs about 290 instructions per
    request (two compares against a constant above CPython's one-digit ints: 3 % of an
    ``fs.stat``, callgrind), and an out-of-range msgid harms only the client that sent
    it: its reply carries the msgid it sent, so it still matches its request, and nothing
    in the server depends on a msgid's value.
    """

    __slots__ = ("max_message_bytes", "errors", "_unpacker", "_fed", "_start", "_batch",
                 "_array", "turn_bytes", "turn_seconds", "_watch", "_watching")

    def __init__(self, max_message_bytes: int, tuples: bool = False, *,
                 turn_bytes: int = TURN_BYTES, turn_seconds: float = TURN_SECONDS,
                 watch_bytes: int = TURN_WATCH_BYTES) -> None:
        """``tuples``: msgpack arrays decode to tuples, a request's params among them
        (about 3 % of a kernel's ``fs.stat`` in-process: no list to build per message and
        per params), for a service whose handlers take any sequence; else lists.
        ``turn_bytes``, ``turn_seconds``, ``watch_bytes``: the per-turn bound (see
        :data:`TURN_BYTES`)."""
        self.max_message_bytes = max_message_bytes
        self.turn_bytes = turn_bytes
        self.turn_seconds = turn_seconds
        self._watching = min(max_message_bytes, watch_bytes, turn_bytes)
        """Buffered input over which :meth:`serve` checks each message: its size (a
        message may be over the limit only then) and the clock.  Never above
        ``turn_bytes``, so a read served unchecked always fits in one turn."""
        self._watch = self._watching
        """The same, or 0 after a turn the clock ended: the next is checked too, however
        small the rest."""
        self.errors = 0
        self._fed = 0
        self._start = 0
        """Stream offset where the next message begins.  ``tell()`` cannot say: the
        unpacker consumes the complete parts of a message it has not finished."""
        self._batch = Batch()
        self._array: type[Sequence[Any]] = tuple if tuples else list
        self._unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, use_list=not tuples,
            max_buffer_size=max_message_bytes + READ_SLACK,
            max_str_len=max_message_bytes, max_bin_len=max_message_bytes,
            max_array_len=max_message_bytes, max_map_len=max_message_bytes,
            max_ext_len=max_message_bytes)

    def feed(self, data: bytes) -> None:
        """Buffer ``data``; :class:`MessageTooBig` if one message is already over the limit."""
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull as exc:
            raise too_big(self.max_message_bytes) from exc
        self._fed += len(data)

    def serve(self, handle: Handler, conn: Any, room: int, budget: int,
              data: bytes = b"") -> Batch:
        """Feed ``data``, then decode and dispatch buffered requests until input runs out
        or a bound is hit, and encode the replies.

        A batch serves at most ``turn_bytes`` of input and, on a read of more than
        ``watch_bytes`` or after a turn the clock ended, stops once ``turn_seconds`` have
        passed (``batch.more``); always at least one message, so a connection makes
        progress every turn.
        ``room`` (at least 1) is how many more calls may wait (``handle`` returned
        ``None``); ``budget`` (at least 1) how many bytes of results may still be produced
        before the batch stops.  A call that starts waiting counts what it reserved for
        its reply (``conn.reserved`` grows by it, see ``ServerConnection.start_call``) as
        produced.  Returns the stream's :class:`Batch`, reused by the next call.
        """
        batch = self._batch
        replies: list[list[Any]] = []
        batch.replies = replies
        batch.wire = None
        if batch.notices:
            batch.notices = []
        append = replies.append
        unpacker = self._unpacker
        if data:  # self.feed(data), inlined: a Python frame per read costs as much
            try:
                unpacker.feed(data)
            except msgpack.BufferFull:
                batch.fatal = too_big(self.max_message_bytes)
                batch.produced = 0
                batch.more = False
                return batch
            self._fed += len(data)
        tell = unpacker.tell
        limit = self.max_message_bytes
        array = self._array
        start = self._start
        produced = 0
        reserved = conn.reserved
        fed = self._fed
        more = True
        # A message can be over the limit only if what is buffered from where the next
        # one begins is, and a read can hold a long turn's work only if it is big: then
        # each message's size and the clock are checked; a small read of requests (every
        # read of the fast path) skips the checks and their bookkeeping.  The turn's byte
        # bound costs nothing per message: it is the compare that ends the input.
        careful = fed - start > self._watch
        stop = fed
        if careful:
            self._watch = self._watching
            deadline = perf_counter() + self.turn_seconds
            if fed - start > self.turn_bytes:
                stop = start + self.turn_bytes
        end = start
        try:
            # The unpacker's own iteration (no ``next()`` per message); everything in the
            # body that could raise is guarded, so what reaches ``except`` is the stream.
            for obj in unpacker:
                end = tell()
                if careful:
                    if end - start > limit:
                        batch.fatal = too_big(limit)
                        break
                    start = end
                    if perf_counter() >= deadline:
                        stop = end  # the turn's time is up: this message is its last
                        self._watch = 0
                try:  # a request is an array of 4; what else unpacks in 4 fails the checks
                    kind, msgid, method, params = obj
                except (TypeError, ValueError):
                    kind = None
                if (kind == 0 and type(msgid) is int and type(method) is str
                        and type(params) is array):
                    try:
                        reply = handle(conn, msgid, method, params)
                    except Exception as exc:  # a service bug must not drop the connection
                        reply = [1, msgid, internal_error(exc), None]
                    if reply is None:
                        produced += conn.reserved - reserved
                        reserved = conn.reserved
                        room -= 1
                        if room <= 0 or produced >= budget:
                            break
                    else:
                        append(reply)
                        result = reply[3]
                        if type(result) is bytes:
                            produced += len(result)
                            if produced >= budget:
                                break
                elif not self._odd_message(obj, batch):
                    break
                if end >= stop:
                    # The input ends with this message (stop without asking the unpacker
                    # for another: its StopIteration costs as much as a request), or the
                    # turn does: the rest waits for the next loop turn.
                    more = end < fed
                    break
            else:  # input ran out inside a message
                more = False
                if fed - end > limit:
                    batch.fatal = too_big(limit)
        except Exception as exc:
            batch.fatal = stream_error(exc, limit)
        self._start = end
        batch.produced = produced
        batch.more = more and batch.fatal is None
        if replies:  # encode_replies(replies), inlined
            try:
                wire = _encode(replies)
            except Exception:
                return batch  # the server encodes them one by one to find the one that fails
            count = len(replies)
            header = 1 if count < 16 else 3 if count < 0x10000 else 5
            batch.wire = wire[header:] if len(wire) < GATHER_BYTES else memoryview(wire)[header:]
        return batch

    def _odd_message(self, obj: Any, batch: Batch) -> bool:
        """Answer a message that is not a request; ``False`` once the stream is given up."""
        message = classify(obj)
        if isinstance(message, Notification):
            return True  # nothing to answer; servers define no client notifications
        self.errors += 1
        if self.errors > MAX_PROTOCOL_ERRORS:
            batch.fatal = ProtocolError(f"{self.errors} malformed messages on this "
                                        "connection; closing it")
            return False
        if isinstance(message, Malformed):
            reason, msgid = message.reason, message.msgid
        else:
            reason, msgid = "a server does not take responses", None
        error = ProtocolError(reason).to_wire()
        if msgid is None:
            batch.notices.append([2, ERROR_NOTIFICATION, [error]])
        else:
            batch.replies.append([1, msgid, error, None])
        return True
