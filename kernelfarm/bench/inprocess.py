"""In-process runs: the same fs operations with no RPC, to split protocol cost from design cost.

A farm's figure mixes two costs: the protocol (sockets, msgpack, the event loop) and the
design (who shares what under which lock).  These runs drop the protocol entirely and
call the fs handlers as the kernel would, so "partitioned vs locked" can be read once
with RPC and once without:

    inprocess-procs    W processes, each with its own FsSubsystem and data dir, no locks
                       (the partitioned design without the protocol);
    inprocess-threads  one process, W threads sharing one FsSubsystem whose methods are
                       wrapped by ``LockProvider("fine")`` (the locked design without it).

Each worker replays the workload's request chains in batches of ``depth`` requests, then
runs the group commit the kernel would run at the end of its loop turn, so a batch is a
loop turn and every request of it completes when the commit does (that is the latency
recorded, as a kernel holds a turn's replies until its flush).  Net workloads are not run
here: their far end is a socket, which is protocol.

The parent talks to each child process as the load generator does (msgpack frames over
stdin/stdout, one shared start instant), and measures the children's CPU with psutil.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kernelfarm.bench.cpu import CpuMeter
from kernelfarm.bench.histogram import DEFAULT_HIGHEST, Histogram
from kernelfarm.bench.loadgen import (
    READY_TIMEOUT_S, RESULT_GRACE_S, LoadResult, WorkerProcess, collect_messages, sleep_until,
    start_together,
)
from kernelfarm.errors import Refusal
from kernelfarm.kernel.commit import Flush, GroupCommit, run_flushes
from kernelfarm.kernel.locks import LockProvider

MODULE = "kernelfarm.bench.inprocess"


@dataclass(frozen=True)
class InProcessPlan:
    """One in-process run: ``workers`` workers, each driving ``depth`` streams per batch."""

    workload: str
    workers: int
    threads: bool
    tenants_per_worker: int
    depth: int
    fsync: str
    scratch: Path


def run_inprocess(plan: InProcessPlan, *, duration_s: float, warmup_s: float
                  ) -> tuple[LoadResult, float]:
    """Run ``plan``; returns what the workers saw and the CPU seconds they used."""
    if not plan.workload.startswith("fs-"):
        raise ValueError(f"in-process runs cover fs workloads only, not {plan.workload!r}")
    if plan.threads:
        jobs = [_job(plan, 0, plan.workers, duration_s, warmup_s)]
    else:
        jobs = [_job(plan, index, 1, duration_s, warmup_s) for index in range(plan.workers)]
    children: list[WorkerProcess] = []
    meter = CpuMeter([], include_descendants=False)
    try:
        for job in jobs:
            children.append(WorkerProcess.spawn(job, MODULE))
        meter = CpuMeter([child.process.pid for child in children], include_descendants=False)
        window_start, window_end = start_together(children, warmup_s, duration_s)
        sleep_until(window_start)
        meter.start()
        sleep_until(window_end)
        meter.stop()
        results = collect_messages(children, "result", window_end + RESULT_GRACE_S)
    finally:
        for child in children:
            child.reap()
    return _combine(results), meter.seconds


def _job(plan: InProcessPlan, index: int, threads: int, duration_s: float,
         warmup_s: float) -> dict[str, Any]:
    return {
        "workload": plan.workload,
        "threads": threads,
        "locked": plan.threads,
        "tenants": [f"p{index}t{n:03d}" for n in range(plan.tenants_per_worker * threads)],
        "depth": plan.depth,
        "fsync": plan.fsync,
        "data_dir": str(plan.scratch / f"worker-{index}"),
        "duration_s": duration_s,
        "warmup_s": warmup_s,
    }


def _combine(results: list[dict[str, Any]]) -> LoadResult:
    histogram = Histogram(DEFAULT_HIGHEST)
    errors: dict[str, int] = {}
    ops = 0
    ops_per_s = 0.0
    window = 0.0
    for result in results:
        histogram.merge(Histogram.from_dict(result["histogram"]))
        for code, n in result["errors"].items():
            errors[code] = errors.get(code, 0) + n
        ops += result["ops"]
        ops_per_s += result["ops"] / result["window_s"] if result["window_s"] > 0 else 0.0
        window = max(window, result["window_s"])
    return LoadResult(ops=ops, errors=errors, duration_s=window, ops_per_s=ops_per_s,
                      histogram=histogram, client_cpu_s=0.0)


# -- the child process ------------------------------------------------------------------


class DirectContext:
    """A :class:`~kernelfarm.kernel.subsystem.KernelContext` for a subsystem outside any kernel.

    It owns every slot, and :meth:`commit` plays the kernel's end-of-turn group commit.
    ``provider`` (the locked design) makes the commit hold every lock, as locked mode does.
    """

    kernel_id = 0
    farm_endpoints: tuple[tuple[str, int], ...] = ()

    def __init__(self, config: Any, data_dir: Path, loop: asyncio.AbstractEventLoop,
                 provider: LockProvider | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self.loop = loop
        self._provider = provider
        # Each driver ends its turn itself (commit), so nothing is scheduled.
        self._group_commit = GroupCommit(lambda commit: None, run_flushes)

    def owns(self, slot: int) -> bool:
        return True

    def request_flush(self, flush: Flush) -> None:
        self._group_commit.request(flush)

    def commit(self) -> None:
        """End a turn.  Threads share this commit: with every lock held no handler can be
        requesting a flush meanwhile, and whichever thread commits flushes all writes."""
        if not self._group_commit.pending:
            return
        if self._provider is None:
            self._group_commit.commit_now()
        else:
            with self._provider.everything():
                self._group_commit.commit_now()


def error_code(exc: Exception) -> str:
    """The wire code a kernel would have answered with, for the error counts."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, "EIO")
    if isinstance(exc, (TypeError, ValueError)):
        return "EINVAL"
    return type(exc).__name__


def _worker(job: dict[str, Any], parent: Any) -> dict[str, Any] | None:
    from kernelfarm import config as configuration
    from kernelfarm.bench.workloads import prepare
    from kernelfarm.fs.subsystem import FsSubsystem

    config = configuration.load(None, {"fs": {"fsync": job["fsync"]}})
    data_dir = Path(job["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()  # fs uses it for batch-fsync timers only
    provider = LockProvider("fine") if job["locked"] else None
    ctx = DirectContext(config, data_dir, loop, provider)
    fs = FsSubsystem(ctx)
    try:
        methods = {m.name: (provider.wrap(m) if provider else m).handler for m in fs.methods()}

        def call(method: str, *params: Any) -> Any:
            result = methods[method](*params)
            ctx.commit()
            return result

        tenants: list[str] = job["tenants"]
        threads, depth = job["threads"], job["depth"]
        slots = [tenants[i % len(tenants)] for i in range(threads * depth)]
        streams = {tenant: slots.count(tenant) for tenant in tenants}
        prepared = prepare(job["workload"], call, streams)
        next_stream = dict.fromkeys(tenants, 0)
        chains = []
        for tenant in slots:
            chains.append([(methods[request[0]], request[1])
                           for request in prepared.chain(tenant, next_stream[tenant])])
            next_stream[tenant] += 1
        parent.send(["ready", None])
        command, t_start = parent.receive(READY_TIMEOUT_S)
        if command != "go":
            return None
        drivers = [_Driver(chains[i * depth:(i + 1) * depth], ctx.commit)
                   for i in range(threads)]
        workers = [threading.Thread(target=driver.run, args=(t_start, job["warmup_s"],
                                                             job["duration_s"]))
                   for driver in drivers[1:]]
        for thread in workers:
            thread.start()
        drivers[0].run(t_start, job["warmup_s"], job["duration_s"])
        for thread in workers:
            thread.join()
    finally:
        fs.close()
        loop.close()
    histogram = Histogram(DEFAULT_HIGHEST)
    errors: dict[str, int] = {}
    for driver in drivers:
        histogram.merge(driver.histogram)
        for code, n in driver.errors.items():
            errors[code] = errors.get(code, 0) + n
    return {"ops": sum(d.ops for d in drivers), "errors": errors,
            "window_s": max(d.window_s for d in drivers), "histogram": histogram.to_dict()}


class _Driver:
    """One worker's loop: a batch of one request per stream, then the group commit."""

    def __init__(self, chains: Sequence[Sequence[tuple[Callable[..., Any], Sequence[Any]]]],
                 commit: Callable[[], None]) -> None:
        self._cycles = [itertools.cycle(chain) for chain in chains]
        self._commit = commit
        self.histogram = Histogram(DEFAULT_HIGHEST)
        self.errors: dict[str, int] = {}
        self.ops = 0
        self.window_s = 0.0

    def run(self, t_start: float, warmup_s: float, duration_s: float) -> None:
        window_start = t_start + warmup_s
        window_end = window_start + duration_s
        sleep_until(t_start)
        cycles, commit, record = self._cycles, self._commit, self.histogram.record
        batch = len(cycles)
        clock, mono = time.perf_counter_ns, time.monotonic
        counting = False
        began = 0
        ops = 0
        while True:
            now = mono()
            if now >= window_end:
                break
            if not counting and now >= window_start:
                counting, ops, began = True, 0, clock()
                self.errors.clear()
            t0 = clock()
            for cycle in cycles:
                handler, params = next(cycle)
                try:
                    result = handler(*params)
                except Exception as exc:  # counted as the kernel would answer it
                    code = error_code(exc)
                    self.errors[code] = self.errors.get(code, 0) + 1
                    continue
                if type(result) is Refusal:  # an expected miss, answered as an error
                    code = result.error["code"]
                    self.errors[code] = self.errors.get(code, 0) + 1
            commit()
            if counting:
                ops += batch
                record(min(clock() - t0, DEFAULT_HIGHEST), batch)
        self.ops = ops
        self.window_s = (clock() - began) / 1e9 if counting else 0.0


def main() -> None:
    from kernelfarm.bench.loadclient import serve_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides, and reaps us
    serve_parent(lambda parent: _worker(parent.receive(READY_TIMEOUT_S), parent))


if __name__ == "__main__":
    main()
