"""The load generator: client processes that keep a server saturated, and what they saw.

A benchmark only measures the server if the client is cheaper per request, so the
requests are encoded once, before the clock starts (:func:`encode_plan`), and several
client processes (:mod:`kernelfarm.bench.loadclient`) share the connections.  All of them
start, warm up and open their measured window at the same absolute ``time.monotonic()``
instant, so their counts add up to one window; ``on_window_start``/``on_window_end`` fire
in this process at those instants, for measuring the server (CPU seconds) alongside.

Each connection has its own target address and its own request chains, one per request in
flight, so a caller can route every tenant's requests to the kernel that owns it.  Runs
are bounded in connections, depth and time, stop by themselves, and reap their processes
whatever happens (errors, KeyboardInterrupt).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from kernelfarm.bench.histogram import DEFAULT_HIGHEST, Histogram
from kernelfarm.errors import KernelfarmError
from kernelfarm.rpc.protocol import encode_request, encode_response
from kernelfarm.supervisor.launch import end_process

Address = tuple[str, int]
Request = tuple[str, Sequence[Any]] | tuple[str, Sequence[Any], Any]
"""A request template: method name, positional params and, optionally, the result it must
get (a reply with another result is counted as an ``EBADRESULT`` error).  Without one,
any result without an error passes."""
Chain = Sequence[Request]
"""The requests one in-flight slot sends in turn, forever (e.g. create, then unlink)."""

T = TypeVar("T")

LOOPBACK = frozenset({"127.0.0.1", "::1"})
MAX_CONNECTIONS = 4096
MAX_DEPTH = 65536
MAX_PROCESSES = 64
MAX_SECONDS = 3600.0
READY_TIMEOUT_S = 60.0
"""Spawning Python, importing uvloop and connecting: generous on a loaded 2-core box."""
START_DELAY_S = 0.05
"""Lead time between sending ``go`` and the common start instant."""
RESULT_GRACE_S = 10.0
REAP_TIMEOUT_S = 2.0


class LoadGenError(KernelfarmError):
    """A load-generator process failed (could not connect, crashed, timed out)."""

    code = "ELOADGEN"


@dataclass(frozen=True)
class ConnectionPlan:
    """One connection: its target and one request chain per request kept in flight."""

    address: Address
    chains: Sequence[Chain]

    def __post_init__(self) -> None:
        host, port = self.address
        if host not in LOOPBACK:
            raise ValueError(f"the load generator only targets 127.0.0.1 or ::1, not {host!r}")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad port {port!r}")
        if not 1 <= len(self.chains) <= MAX_DEPTH:
            raise ValueError(f"a connection needs 1..{MAX_DEPTH} chains, not {len(self.chains)}")
        if not all(self.chains):
            raise ValueError("every chain needs at least one request")


@dataclass
class LoadResult:
    """What the clients saw in the measured window (latencies in nanoseconds)."""

    ops: int
    errors: dict[str, int]
    duration_s: float
    ops_per_s: float
    histogram: Histogram
    client_cpu_s: float
    lost_connections: int = 0
    protocol_errors: int = 0
    reads: int = 0
    """Reads of replies by the clients (``ops / reads`` replies per read)."""
    by_bytes: int = 0
    """Replies checked by comparing a read with the expected bytes, not parsed."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "errors": dict(self.errors),
            "duration_s": self.duration_s,
            "ops_per_s": self.ops_per_s,
            "client_cpu_s": self.client_cpu_s,
            "lost_connections": self.lost_connections,
            "protocol_errors": self.protocol_errors,
            "reads": self.reads,
            "by_bytes": self.by_bytes,
            "histogram": self.histogram.to_dict(),
        }


def encode_plan(plan: ConnectionPlan) -> list[Any]:
    """``[host, port, slots, replies]``: slot ``s`` holds its chain's requests encoded with
    msgid ``s``, and ``replies`` the expected reply of each (None where no result is given)."""
    slots = [[encode_request(slot, request[0], list(request[1])) for request in chain]
             for slot, chain in enumerate(plan.chains)]
    replies = [[encode_response(slot, None, request[2]) if len(request) > 2 else None
                for request in chain] for slot, chain in enumerate(plan.chains)]
    return [plan.address[0], plan.address[1], slots, replies]


def run_load(plans: Sequence[ConnectionPlan], *, duration_s: float, warmup_s: float = 0.5,
             processes: int = 2, cores: Sequence[int] | None = None,
             on_window_start: Callable[[], object] | None = None,
             on_window_end: Callable[[], object] | None = None,
             highest_ns: int = DEFAULT_HIGHEST) -> LoadResult:
    """Drive ``plans`` from ``processes`` client processes; return the measured window.

    Connections are dealt in contiguous blocks (:func:`deal`); process ``i`` is pinned
    to ``cores[i % len(cores)]`` when ``cores`` is given.
    """
    if not 1 <= len(plans) <= MAX_CONNECTIONS:
        raise ValueError(f"need 1..{MAX_CONNECTIONS} connections, not {len(plans)}")
    if not 0 < duration_s <= MAX_SECONDS or not 0 <= warmup_s <= MAX_SECONDS:
        raise ValueError("duration_s must be in (0, 3600] and warmup_s in [0, 3600]")
    if not 1 <= processes <= MAX_PROCESSES:
        raise ValueError(f"processes must be 1..{MAX_PROCESSES}, not {processes}")
    processes = min(processes, len(plans))
    encoded = [encode_plan(plan) for plan in plans]
    jobs = [{
        "connections": block,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "core": cores[i % len(cores)] if cores else None,
        "highest": highest_ns,
        "sub_bucket_bits": Histogram().sub_bucket_bits,
    } for i, block in enumerate(deal(encoded, processes))]

    clients: list[WorkerProcess] = []
    try:
        for job in jobs:
            clients.append(WorkerProcess.spawn(job))
        window_start, window_end = start_together(clients, warmup_s, duration_s)
        sleep_until(window_start)
        if on_window_start is not None:
            on_window_start()
        sleep_until(window_end)
        if on_window_end is not None:
            on_window_end()
        results = collect_messages(clients, "result", window_end + RESULT_GRACE_S)
    finally:
        for client in clients:
            client.reap()
    return _combine(results, highest_ns)


def deal(items: Sequence[T], processes: int) -> list[list[T]]:
    """``items`` in ``processes`` contiguous blocks whose sizes differ by at most one.

    Blocks, not round-robin: callers lay connections out grouped by server
    (:func:`kernelfarm.bench.layout.spread`), so a process drives the connections of as
    few servers as it can, and a server's replies wake as few load processes as they can
    (one each with as many processes as kernels).  Dealt round-robin, every process drove
    every kernel: a partitioned farm's kernels and clients woke each other more often
    (0.2-0.3 us more kernel and client CPU per fs-stat, 0.5-1 us per mixed request).
    """
    count = len(items)
    return [list(items[i * count // processes:(i + 1) * count // processes])
            for i in range(processes)]


def _combine(results: list[dict[str, Any]], highest_ns: int) -> LoadResult:
    histogram = Histogram(highest_ns)
    errors: dict[str, int] = {}
    for result in results:
        histogram.merge(Histogram.from_dict(result["histogram"]))
        for code, n in result["errors"].items():
            errors[code] = errors.get(code, 0) + n
    ops = sum(result["ops"] for result in results)
    return LoadResult(
        ops=ops,
        errors=errors,
        duration_s=max(result["window_s"] for result in results),
        # Each process timed its own window; adding rates keeps a late timer from
        # diluting the others.
        ops_per_s=sum(result["ops"] / result["window_s"] for result in results
                      if result["window_s"] > 0),
        histogram=histogram,
        client_cpu_s=sum(result["client_cpu_s"] for result in results),
        lost_connections=sum(result["lost_connections"] for result in results),
        protocol_errors=sum(result["protocol_errors"] for result in results),
        reads=sum(result["reads"] for result in results),
        by_bytes=sum(result["by_bytes"] for result in results),
    )


def start_together(workers: list[WorkerProcess], warmup_s: float,
                   duration_s: float) -> tuple[float, float]:
    """Once every worker said "ready", give them one start instant; returns the timed
    window (start, end) that follows the warm-up."""
    collect_messages(workers, "ready", time.monotonic() + READY_TIMEOUT_S)
    t_start = time.monotonic() + START_DELAY_S
    for worker in workers:
        worker.send(["go", t_start])
    window_start = t_start + warmup_s
    return window_start, window_start + duration_s


def sleep_until(instant: float) -> None:
    """Wait for a fixed instant of the benchmark's own schedule (not for an event)."""
    remaining = instant - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


class WorkerProcess:
    """One benchmark child (``python -m MODULE``) and its msgpack frame pipes.

    The load clients use it, and so do the in-process runs (:mod:`kernelfarm.bench.inprocess`):
    a job goes down stdin, ``["ready", ...]``/``["result", ...]``/``["failed", ...]`` come up.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
        self.message: Any = None

    @classmethod
    def spawn(cls, job: dict[str, Any], module: str = "kernelfarm.bench.loadclient"
              ) -> WorkerProcess:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        client = cls(process)
        try:
            client.send(job)
        except BaseException:
            client.reap()
            raise
        return client

    def send(self, message: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(msgpack.packb(message))
        self.process.stdin.flush()

    def fileno(self) -> int:
        assert self.process.stdout is not None
        return self.process.stdout.fileno()

    def read_message(self) -> bool:
        """Read what is available and take a complete message if any. False at EOF."""
        chunk = os.read(self.fileno(), 1 << 20)
        if not chunk:
            return False
        self._unpacker.feed(chunk)
        self.take_buffered()
        return True

    def take_buffered(self) -> None:
        """Take the next message already read, if there is one and none is held."""
        if self.message is None:
            for message in self._unpacker:
                self.message = message
                break

    def reap(self) -> None:
        process = self.process
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # a broken pipe to a dead child has nothing left to flush
        end_process(process, timeout=REAP_TIMEOUT_S)


def collect_messages(clients: list[WorkerProcess], kind: str, deadline: float) -> list[Any]:
    """Wait until every child has sent a ``kind`` message; raise on failure or deadline."""
    for client in clients:
        client.message = None
        client.take_buffered()
    pending = {client.fileno(): client for client in clients}
    with selectors.DefaultSelector() as selector:
        for fd in pending:
            selector.register(fd, selectors.EVENT_READ)
        while pending:
            for fd, client in list(pending.items()):
                if client.message is not None:
                    _check(client, kind)
                    selector.unregister(fd)
                    del pending[fd]
            if not pending:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadGenError(f"{len(pending)} load-generator process(es) sent no "
                                   f"{kind!r} in time")
            for key, _ in selector.select(remaining):
                client = pending[key.fd]
                if not client.read_message():
                    raise LoadGenError(f"load-generator process {client.process.pid} exited "
                                       f"(code {client.process.poll()}) before {kind!r}")
    return [client.message[1] for client in clients]


def _check(client: WorkerProcess, kind: str) -> None:
    tag, body = client.message
    if tag == "failed":
        raise LoadGenError(f"load-generator process failed: {body}")
    if tag != kind:
        raise LoadGenError(f"expected {kind!r} from a load-generator process, got {tag!r}")
