"""One load-generator process: a uvloop loop driving C connections, D requests in flight each.

Started by :mod:`kernelfarm.bench.loadgen` as ``python -m kernelfarm.bench.loadclient``; it
talks to its parent in msgpack frames over stdin/stdout:

    parent -> job     {"connections": [[host, port, [[request bytes, ...] per slot]], ...],
                       "warmup_s", "duration_s", "core", "highest", "sub_bucket_bits"}
    child  -> ready   ["ready", None]           (every connection is up)
    parent -> go      ["go", t_start]           (absolute time.monotonic(), shared by all)
    child  -> result  ["result", {...}]         (or ["failed", message] at any point)

The hot loop is why this is its own process and module: a response costs one C-unpacker
step, one latency record and one ``next()`` on a pre-encoded request cycle; the next
requests of a read leave in one ``write()``.  A connection whose replies carry maps (an
``fs.stat`` result: building its dict costs the client more than the kernel spends
packing it) stops building results: it reads each reply's header, msgid and error and
skips the result in C, so what it still checks (a response, a msgid it sent, the error)
costs the same whatever the result.  Slot ``s`` of a connection always uses msgid
``s``, so a reply names the slot whose next request goes out, and the send time of that
slot is the request's start.  The process ends by itself after its window, and when its
parent goes away (stdin closes) while it waits for ``go``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import select
import signal
import sys
import time
from collections import Counter
from typing import Any, Callable, cast

import msgpack
import psutil
import uvloop

from kernelfarm.bench.histogram import Histogram
from kernelfarm.rpc.protocol import make_unpacker

CONNECT_TIMEOUT_S = 10.0
GO_TIMEOUT_S = 60.0
MAX_BUFFER = 64 * 1024 * 1024
"""Bounds the unparsed reply bytes a connection may hold (4 KiB reads x deep pipelines)."""


class LoadConnection(asyncio.Protocol):
    """Keeps one request in flight per slot, cycling each slot through its own requests."""

    def __init__(self, slots: list[list[bytes]], histogram: Histogram,
                 on_lost: Callable[[], None]) -> None:
        self._cycles = [itertools.cycle(requests) for requests in slots]
        self._sent_ns = [0] * len(slots)
        self._histogram = histogram
        self._on_lost = on_lost
        self._unpacker = make_unpacker(MAX_BUFFER)
        self._transport: asyncio.Transport | None = None
        self._skipping = False
        """Results are skipped, not built (see the module docstring)."""
        self._step = 0
        """Where a skipped reply cut by the end of a read stopped: 0 = at its start."""
        self._msgid = 0
        self._running = False
        self._stopped = False
        self.ops = 0
        self.errors: dict[str, int] = {}
        self.protocol_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self) -> None:
        assert self._transport is not None
        self._running = True
        now = time.perf_counter_ns()
        self._sent_ns = [now] * len(self._cycles)
        self._transport.write(b"".join([next(cycle) for cycle in self._cycles]))

    def reset_counts(self) -> None:
        self.ops = 0
        self.errors = {}
        self.protocol_errors = 0

    def stop(self) -> None:
        self._running = False
        self._stopped = True
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        sent = self._sent_ns
        cycles = self._cycles
        # Requests sent in one write share a send time, so the replies of one read carry
        # few distinct latencies: gather send times (a C-speed append), bin them once.
        stamps: list[int] = []
        stamp = stamps.append
        out: list[bytes] = []
        send = out.append
        unpacker = self._unpacker
        try:
            unpacker.feed(data)
            if not self._skipping:
                for _kind, msgid, error, result in unpacker:
                    stamp(sent[msgid])
                    if error is not None:
                        self._count_error(error)
                    send(next(cycles[msgid]))
                    sent[msgid] = now
                    if type(result) is dict:
                        self._skipping = True
                        break
            if self._skipping:
                self._skip_replies(stamp, send, now)
        except (ValueError, TypeError, IndexError, msgpack.UnpackException):
            # Not a response this connection could have caused: the server is broken.
            self.protocol_errors += 1
            self._running = False
            assert self._transport is not None
            self._transport.abort()
            return
        finally:
            self.ops += len(stamps)
            record = self._histogram.record
            highest = self._histogram.highest  # a stalled server is slow, not a crash
            for sent_ns, n in Counter(stamps).items():
                record(min(now - sent_ns, highest), n)
        if self._running and out:
            assert self._transport is not None
            self._transport.write(b"".join(out))

    def _skip_replies(self, stamp: Callable[[int], None], send: Callable[[bytes], None],
                      now: int) -> None:
        """The rest of the buffer, reply by reply without building results; a reply the
        read cut short is taken up where it stopped (``_step``) by the next read."""
        unpacker = self._unpacker
        header, unpack, skip = unpacker.read_array_header, unpacker.unpack, unpacker.skip
        sent, cycles = self._sent_ns, self._cycles
        step = self._step
        try:
            while True:
                if step == 0:
                    if header() != 4:
                        raise ValueError("a response is an array of 4")
                    step = 1
                if step == 1:
                    if unpack() != 1:
                        raise ValueError("not a response")
                    step = 2
                if step == 2:
                    self._msgid = unpack()
                    step = 3
                if step == 3:
                    error = unpack()
                    if error is not None:
                        self._count_error(error)
                    step = 4
                skip()
                step = 0
                msgid = self._msgid
                stamp(sent[msgid])
                send(next(cycles[msgid]))
                sent[msgid] = now
        except msgpack.OutOfData:
            self._step = step

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

    for host, port, slots in job["connections"]:
        _, connection = await asyncio.wait_for(
            loop.create_connection(functools.partial(LoadConnection, slots, histogram, lost),
                                   host, port),
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
