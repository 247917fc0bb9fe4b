"""One load-generator process: a uvloop loop driving C connections, D requests in flight each.

Started by :mod:`kernelfarm.bench.loadgen` as ``python -m kernelfarm.bench.loadclient``; it
talks to its parent in msgpack frames over stdin/stdout:

    parent -> job     {"connections": [[host, port, slots, replies], ...], "warmup_s",
                       "duration_s", "core", "highest", "sub_bucket_bits"}
                      (slots: [[request bytes, ...] per slot]; replies: the same shape,
                      each the expected reply's bytes or None)
    child  -> ready   ["ready", None]           (every connection is up)
    parent -> go      ["go", t_start]           (absolute time.monotonic(), shared by all)
    child  -> result  ["result", {...}]         (or ["failed", message] at any point)

The hot loop is why this is its own process and module: a client that costs as much per
request as the server measures itself (on two cores it shares them with the kernels).
Every reply is checked (a response, to a slot with a request in flight, without an error,
with the expected result when one is known), yet most cost no Python per reply: slot
``s`` always uses msgid ``s`` and replays a fixed chain, so once each request's reply is
known (given, or learned from the first that passed), the replies the server owes are a
known byte stream (:mod:`kernelfarm.bench.replystream`).  A read equal to the stream's
next bytes is one C comparison; the requests it releases are one slice, sent in one
``write()``; latencies are recorded per send batch.  Any other read (a reply out of
order, an error, another result, a broken server) is taken reply by reply: a reply that is
its slot's expected bytes (its msgid sits at its third byte) costs one comparison, any
other is decoded; then the stream is laid out again from the new order (at once, or after
some replies taken one by one when the order keeps changing, as waiting ``net.recv``s make
it).
The process ends by itself after its window, and when its parent goes away (stdin closes)
while it waits for ``go``.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import os
import select
import signal
import sys
import time
from typing import Any, Callable, cast

import msgpack
import psutil
import uvloop

from kernelfarm.bench.histogram import Histogram
from kernelfarm.bench.replystream import ReplyStream, lay_out

CONNECT_TIMEOUT_S = 10.0
GO_TIMEOUT_S = 60.0
MAX_BUFFER = 64 * 1024 * 1024
"""Bounds the unparsed reply bytes a connection may hold (4 KiB reads x deep pipelines)."""
WRONG_RESULT = "EBADRESULT"
"""Counted like an error code: a reply without an error whose result is not the expected one."""
UNCHECKED: Any = object()
"""A request whose result is not known in advance: any result without an error passes."""


class LoadConnection(asyncio.Protocol):
    """Keeps one request in flight per slot, cycling each slot through its own requests.

    ``slots[s]``: slot ``s``'s chain of encoded requests (msgid ``s``); ``replies[s][i]``:
    the encoded reply expected to ``slots[s][i]`` when its result is known in advance, or
    None (learned: the bytes of the last reply that passed the checks).
    """

    def __init__(self, slots: list[list[bytes]], histogram: Histogram,
                 on_lost: Callable[[], None],
                 replies: list[list[bytes | None]] | None = None) -> None:
        depth = len(slots)
        self._requests = slots
        self._replies: list[list[bytes | None]] = (
            [list(chain) for chain in replies] if replies is not None
            else [[None] * len(chain) for chain in slots])
        self._results = [[UNCHECKED if reply is None else msgpack.unpackb(reply)[3]
                          for reply in chain] for chain in self._replies]
        """The result each request must get, or UNCHECKED (any result without an error)."""
        self._unknown = sum(chain.count(None) for chain in self._replies)
        self._histogram = histogram
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        # Parsing: the slots in flight in send order, each one's chain position and send time.
        self._order = list(range(depth))
        self._positions = [0] * depth
        self._sent_ns = [0] * depth
        self._pending = b""
        """The start of a reply the last read cut short."""
        # Comparing: where the stream stands, and the send times of the entries in flight.
        self._stream: ReplyStream | None = None
        self._follow = memoryview(b"")
        """``self._stream.follow``, sliced without copying."""
        self._offset = 0
        self._entry = 0
        self._done = 0
        self._batches: collections.deque[tuple[int, int]] = collections.deque()
        """(end, ns): entries up to ``end`` (absolute, exclusive) left at ``ns``."""
        self._hold = 0
        """Replies to parse before the stream is laid out again (see _stop_comparing)."""
        self._backoff = 0
        self._running = False
        self._stopped = False
        self.ops = 0
        self.by_bytes = 0
        self.reads = 0
        self.errors: dict[str, int] = {}
        self.protocol_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self) -> None:
        assert self._transport is not None
        self._running = True
        now = time.perf_counter_ns()
        self._sent_ns = [now] * len(self._requests)
        self._transport.write(b"".join([self._requests[slot][0] for slot in self._order]))
        self._compare_from_here()

    def reset_counts(self) -> None:
        self.ops = 0
        self.by_bytes = 0
        self.reads = 0
        self.errors = {}
        self.protocol_errors = 0

    def stop(self) -> None:
        self._running = False
        self._stopped = True
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.reads += 1
        stream = self._stream
        if stream is not None:
            if stream.expected.startswith(data, self._offset) and \
                    self._take_expected(stream, self._offset + len(data), now):
                return
            self._stop_comparing(stream)
        self._parse(data, now)

    def _take_expected(self, stream: ReplyStream, offset: int, now: int) -> bool:
        """The read is the stream's next bytes: count the replies it completes, record
        their latencies by send batch, send the requests they release in one write.
        False, and nothing taken, if it holds more replies than requests are in flight."""
        entry = self._entry
        last = bisect.bisect_right(stream.ends, offset, entry)
        if last > entry:
            count = last - entry
            if count > len(self._requests):
                return False
            self.ops += count
            self.by_bytes += count
            self._record_batches(count, now)
            self._batches.append((self._done + len(self._requests), now))
            if self._running:
                assert self._transport is not None
                self._transport.write(  # a view: 16 x 4 KiB writes are not copied again
                    self._follow[stream.follow_starts[entry]:stream.follow_starts[last]])
            if offset >= stream.period_bytes:
                offset -= stream.period_bytes
                last -= stream.period_entries
        self._offset, self._entry = offset, last
        return True

    def _record_batches(self, count: int, now: int) -> None:
        """Latencies of the next ``count`` entries, one histogram step per send batch."""
        histogram, batches = self._histogram, self._batches
        highest = histogram.highest  # a stalled server is slow, not a crash
        done = self._done
        target = done + count
        while done < target:
            end, sent_ns = batches[0]
            taken = min(end, target) - done
            histogram.record(min(now - sent_ns, highest), taken)
            done += taken
            if done == end:
                batches.popleft()
        self._done = done

    def _stop_comparing(self, stream: ReplyStream) -> None:
        """Back to parsing: the entries in flight become slots in send order again, and
        the matched start of a cut reply becomes the bytes still to parse.

        Laying a stream out costs about a parsed reply per entry, so a server that keeps
        changing the order (net calls that wait) must not have it laid out again after
        every read: when a stream did not last a period, the next one waits for twice as
        many parsed replies as the last wait (from a period, up to 64 periods)."""
        if self._done >= stream.period_entries:
            self._backoff = 0
        else:
            self._backoff = min(max(2 * self._backoff, stream.period_entries),
                                64 * stream.period_entries)
        self._hold = self._backoff
        entry, depth = self._entry, len(self._requests)
        self._pending = stream.expected[stream.start_of(entry):self._offset]
        times: list[int] = []
        done = self._done
        for end, sent_ns in self._batches:
            times += [sent_ns] * (end - done)
            done = end
        self._order = stream.slots[entry:entry + depth]
        for index, slot in enumerate(self._order):
            self._positions[slot] = stream.positions[entry + index]
            self._sent_ns[slot] = times[index]
        self._stream = None
        self._batches.clear()

    def _compare_from_here(self) -> None:
        """Lay out the stream from the slots in flight, if every reply is known by now
        (and the start of a cut reply, if any, is the start of the first expected one)."""
        if self._unknown or self._hold > 0:
            return
        stream = lay_out(self._order, self._positions, self._requests, self._replies)
        if stream is None or not stream.expected.startswith(self._pending):
            return
        self._stream, self._offset, self._entry, self._done = stream, len(self._pending), 0, 0
        self._follow = memoryview(stream.follow)
        self._pending = b""
        self._batches.clear()
        for index, slot in enumerate(self._order):
            sent_ns = self._sent_ns[slot]
            if self._batches and self._batches[-1][1] == sent_ns:
                self._batches[-1] = (index + 1, sent_ns)
            else:
                self._batches.append((index + 1, sent_ns))

    def _parse(self, data: bytes, now: int) -> None:
        """Reply by reply: a response, to a slot in flight, its error, and its result
        against the expected one.  A reply that is its slot's expected bytes (the msgid of a
        response sits at its third byte) is taken by one comparison; any other is decoded."""
        buffer = self._pending + data if self._pending else data
        if len(buffer) > MAX_BUFFER:
            self._broken()
            return
        requests, replies, positions = self._requests, self._replies, self._positions
        order, sent, depth = self._order, self._sent_ns, len(self._requests)
        stamps: list[int] = []
        out: list[bytes] = []
        released: list[int] = []
        """Slots whose next request leaves after this read: none can be answered in it."""
        unpacker: msgpack.Unpacker | None = None
        base = 0
        """Where ``unpacker``'s input starts in ``buffer``."""
        start = matched = 0
        size = len(buffer)
        try:
            while start < size:
                msgid = buffer[start + 2] if size - start > 2 and buffer[start] == 0x94 \
                    and buffer[start + 1] == 1 else depth
                expected = replies[msgid][positions[msgid]] if msgid < depth else None
                if expected is not None and buffer.startswith(expected, start):
                    order.remove(msgid)  # ValueError: no request of that slot is in flight
                    end = start + len(expected)
                    matched += 1
                    if unpacker is not None:
                        unpacker.skip()
                else:
                    if expected is not None and size - start < len(expected) and \
                            expected.startswith(buffer[start:]):
                        break  # the expected reply, cut short by the read
                    if unpacker is None:
                        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_BUFFER)
                        unpacker.feed(memoryview(buffer)[start:])
                        base = start
                    msgid = self._decode(unpacker, buffer, base)
                    end = base + unpacker.tell()
                stamps.append(sent[msgid])
                position = (positions[msgid] + 1) % len(requests[msgid])
                positions[msgid] = position
                out.append(requests[msgid][position])
                sent[msgid] = now
                released.append(msgid)
                start = end
        except msgpack.OutOfData:
            pass
        except (ValueError, TypeError, IndexError, msgpack.UnpackException):
            # Not a response this connection could have caused: the server is broken.
            self._broken()
            return
        finally:
            self._pending = buffer[start:]
            order += released
            self.ops += len(stamps)
            self.by_bytes += matched
            self._hold -= len(stamps)
            record = self._histogram.record
            highest = self._histogram.highest
            # One step per send batch (a read's replies come from one or a few): a set
            # and a count per batch, where a Counter cost about 1 µs per read.
            for sent_ns in set(stamps):
                record(min(now - sent_ns, highest), stamps.count(sent_ns))
        if self._running and out:
            assert self._transport is not None
            self._transport.write(b"".join(out))
        self._compare_from_here()

    def _decode(self, unpacker: msgpack.Unpacker, buffer: bytes, base: int) -> int:
        """Decode the next reply from ``unpacker`` (fed ``buffer`` from ``base``) and check
        it; returns its msgid.  ValueError: not a response to a slot in flight."""
        start = base + unpacker.tell()
        if unpacker.read_array_header() != 4 or unpacker.unpack() != 1:
            raise ValueError("not a response")
        msgid, error = unpacker.unpack(), unpacker.unpack()
        unpacker.skip()
        if type(msgid) is not int:
            raise ValueError("a msgid is an int")
        self._order.remove(msgid)  # ValueError: no request of that slot is in flight
        if error is not None:
            self._count_error(error)
        else:
            position = self._positions[msgid]
            reply = buffer[start:base + unpacker.tell()]
            if reply != self._replies[msgid][position]:
                self._check(msgid, position, reply)
        return msgid

    def _check(self, slot: int, position: int, reply: bytes) -> None:
        """A reply without an error whose bytes differ from the expected ones: right if
        its result is the one required (or none is), and then its bytes are expected."""
        wanted = self._results[slot][position]
        if wanted is not UNCHECKED and msgpack.unpackb(reply, raw=False)[3] != wanted:
            self.errors[WRONG_RESULT] = self.errors.get(WRONG_RESULT, 0) + 1
            return
        if self._replies[slot][position] is None:
            self._unknown -= 1
        self._replies[slot][position] = reply

    def _broken(self) -> None:
        self.protocol_errors += 1
        self._running = False
        assert self._transport is not None
        self._transport.abort()

    def _count_error(self, error: Any) -> None:
        code = error.get("code") if isinstance(error, dict) else None
        key = code if isinstance(code, str) else "EMALFORMED"
        self.errors[key] = self.errors.get(key, 0) + 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._running = False
        if not self._stopped:
            self._stopped = True
            self._on_lost()


class Parent:
    """The msgpack frame channel to the parent on stdin/stdout (in-process runs use it too)."""

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)

    def receive(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for message in self._unpacker:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([0], [], [], remaining)[0]:
                raise TimeoutError("no word from the load generator's parent")
            chunk = os.read(0, 1 << 20)
            if not chunk:
                raise EOFError("the load generator's parent went away")
            self._unpacker.feed(chunk)

    def send(self, message: Any) -> None:
        sys.stdout.buffer.write(msgpack.packb(message))
        sys.stdout.buffer.flush()


async def _run(job: dict[str, Any], parent: Parent) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    histogram = Histogram(job["highest"], job["sub_bucket_bits"])
    all_lost = asyncio.Event()
    connections: list[LoadConnection] = []
    live = 0
    # When each loss was seen, by the host's monotonic clock: a connection killed just after
    # the window opened may be reported by the loop before this process's own window-start
    # code runs, so a loss is placed in the window by its time, not by when we looked.
    lost_at: list[float] = []

    def lost() -> None:
        nonlocal live
        live -= 1
        lost_at.append(time.monotonic())
        if live == 0:
            all_lost.set()

    for host, port, slots, replies in job["connections"]:
        _, connection = await asyncio.wait_for(
            loop.create_connection(
                functools.partial(LoadConnection, slots, histogram, lost, replies), host, port),
            CONNECT_TIMEOUT_S)
        connections.append(connection)
        live += 1

    parent.send(["ready", None])
    command, t_start = parent.receive(GO_TIMEOUT_S)
    if command != "go":
        return None
    window_start = t_start + job["warmup_s"]
    window_end = window_start + job["duration_s"]

    await asyncio.sleep(max(0.0, t_start - time.monotonic()))
    for connection in connections:
        connection.start()
    await asyncio.sleep(max(0.0, window_start - time.monotonic()))
    for connection in connections:
        connection.reset_counts()
    histogram.reset()
    cpu_start = time.process_time()
    began = time.perf_counter()
    try:
        await asyncio.wait_for(all_lost.wait(), max(0.0, window_end - time.monotonic()))
    except TimeoutError:
        pass
    window_s = time.perf_counter() - began
    client_cpu_s = time.process_time() - cpu_start
    ops = sum(connection.ops for connection in connections)
    errors: dict[str, int] = {}
    for connection in connections:
        for code, n in connection.errors.items():
            errors[code] = errors.get(code, 0) + n
    result = {
        "ops": ops,
        "by_bytes": sum(connection.by_bytes for connection in connections),
        "reads": sum(connection.reads for connection in connections),
        "errors": errors,
        "window_s": window_s,
        "client_cpu_s": client_cpu_s,
        "lost_connections": sum(1 for at in lost_at if at >= window_start),
        "protocol_errors": sum(connection.protocol_errors for connection in connections),
        "histogram": histogram.to_dict(),
    }
    for connection in connections:
        connection.stop()
    return result


def serve_parent(work: Callable[[Parent], dict[str, Any] | None]) -> None:
    """A worker process's body: ``work`` takes its job from the parent and returns the
    result, which goes back up; a failure goes up as ``["failed", text]`` instead."""
    parent = Parent()
    try:
        result = work(parent)
    except EOFError:
        return  # the parent is gone; nobody wants a result
    except Exception as exc:  # reported to the parent, which raises it there
        parent.send(["failed", f"{type(exc).__name__}: {exc}"])
        return
    if result is not None:
        parent.send(["result", result])


def _load(parent: Parent) -> dict[str, Any] | None:
    job = parent.receive(GO_TIMEOUT_S)
    if job.get("core") is not None:
        psutil.Process().cpu_affinity([job["core"]])
    return uvloop.run(_run(job, parent))


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and reaps us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve_parent(_load)


if __name__ == "__main__":
    main()
