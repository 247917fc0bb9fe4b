"""net through the farm: connection setups/s and echo round trips/s, one kernel vs two.

For each farm size, a real ``kernelfarm serve`` runs on 127.0.0.1 and several client
processes (asyncio client, many calls in flight each) drive many tenant namespaces, which
hash across the kernels.  Two phases, each warmed up and then timed:

- setup: ``net.socket`` + ``net.connect`` + ``net.close`` to an echo peer, per connection;
- echo: ``net.send`` + ``net.recv`` of a small message on an open socket, per round trip.

The echo peer is the benchmarks' byte echo (``kernelfarm.bench.echo``), one process
listening on several ports (each connection the kernel closes sits in TIME_WAIT on the
kernel's side; spreading over ports keeps the loopback 4-tuples from running out).  The
farm starts as ``kernelfarm bench`` starts it, kernel CPU is metered and latencies kept
in the histogram of ``kernelfarm.bench``.  Kernel CPU over the timed window tells whether
the kernels or the machine's other processes were the limit: on a 2-core machine the
clients and the echo peer share the cores with the kernels.

    python benchmarks/net_bench.py [--duration 4] [--kernels 1,2] [--processes 3]
                                   [--concurrency 32] [--tenants 64] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kernelfarm.bench.cpu import CpuMeter
from kernelfarm.bench.echo import running_echo
from kernelfarm.bench.histogram import Histogram
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import running_farm
from kernelfarm.client import Client
from kernelfarm.partition import key_slot

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PHASES = ("setup", "echo")
PHASE_LABELS = {"setup": "connection setups", "echo": "echo round trips"}
ECHO_PORTS = 8
MESSAGE = b"x" * 64
START_DEADLINE_S = 30.0


# -- the farm -----------------------------------------------------------------------------------

def tenants_per_kernel(cluster_map: dict[str, Any], tenants: list[str]) -> dict[int, int]:
    owners: dict[int, int] = {}
    for name in tenants:
        slot = key_slot(name)
        owner = next(kid for first, last, kid in cluster_map["slots"] if first <= slot <= last)
        owners[owner] = owners.get(owner, 0) + 1
    return dict(sorted(owners.items()))


# -- client processes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerPlan:
    index: int
    control: tuple[str, int]
    echo_ports: list[int]
    tenants: list[str]
    concurrency: int
    warmup_s: float
    duration_s: float


@dataclass
class PhaseResult:
    ops: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: dict[str, Any] = field(default_factory=dict)
    """A :class:`Histogram` of the counted operations' latencies (ns), as a dict."""


class _Window:
    """Counts operations that finish inside the timed window, after the warm-up."""

    def __init__(self, plan: WorkerPlan) -> None:
        now = time.monotonic()
        self.opens = now + plan.warmup_s
        self.closes = self.opens + plan.duration_s
        self.result = PhaseResult()
        self.histogram = Histogram()

    def running(self) -> bool:
        return time.monotonic() < self.closes

    def done(self, started: float) -> None:
        now = time.monotonic()
        if self.opens <= now < self.closes:
            self.result.ops += 1
            self.histogram.record(int((now - started) * 1e9))

    def finished(self) -> PhaseResult:
        self.result.latencies = self.histogram.to_dict()
        return self.result

    def failed(self, exc: BaseException) -> None:
        self.result.errors += 1
        self.result.first_error = self.result.first_error or repr(exc)


async def _setup_phase(client: Any, plan: WorkerPlan, barrier: Any) -> PhaseResult:
    async def task(ns: str, port: int) -> None:
        while window.running():
            started = time.monotonic()
            try:
                sock = await client.net.socket(ns)
                try:
                    await sock.connect("127.0.0.1", port)
                finally:
                    await sock.close()
            except OSError as exc:
                window.failed(exc)
                continue
            window.done(started)

    barrier.wait()
    window = _Window(plan)
    await asyncio.gather(*(task(ns, port) for ns, port in _assignments(plan)))
    return window.finished()


async def _echo_phase(client: Any, plan: WorkerPlan, barrier: Any) -> PhaseResult:
    async def task(sock: Any) -> None:
        while window.running():
            started = time.monotonic()
            try:
                await sock.sendall(MESSAGE)
                got = 0
                while got < len(MESSAGE):
                    chunk = await sock.recv(len(MESSAGE) - got)
                    if not chunk:
                        raise ConnectionResetError("the echo peer closed")
                    got += len(chunk)
            except OSError as exc:
                window.failed(exc)
                return
            window.done(started)

    sockets = []
    for ns, port in _assignments(plan):
        sock = await client.net.socket(ns)
        await sock.connect("127.0.0.1", port)
        sockets.append(sock)
    barrier.wait()
    window = _Window(plan)
    try:
        await asyncio.gather(*(task(sock) for sock in sockets))
    finally:
        for sock in sockets:
            await sock.close()
    return window.finished()


def _assignments(plan: WorkerPlan) -> list[tuple[str, int]]:
    """Task j of worker i: tenant (i * concurrency + j) mod tenants, ports round-robin."""
    first = plan.index * plan.concurrency
    return [(plan.tenants[(first + j) % len(plan.tenants)],
             plan.echo_ports[(first + j) % len(plan.echo_ports)])
            for j in range(plan.concurrency)]


def worker(plan: WorkerPlan, barrier: Any, results: Connection) -> None:
    """Process body: both phases against the farm; sends ``{phase: PhaseResult as dict}``
    back (plain dicts: classes of a spawned ``__main__`` do not unpickle in the parent)."""
    import uvloop

    import kernelfarm.aio

    async def run() -> dict[str, dict[str, Any]]:
        async with kernelfarm.aio.Client(plan.control) as client:
            return {"setup": asdict(await _setup_phase(client, plan, barrier)),
                    "echo": asdict(await _echo_phase(client, plan, barrier))}

    try:
        results.send(uvloop.run(run()))
    except BaseException:
        barrier.abort()  # so the parent and the other workers do not wait forever
        raise


# -- measuring ----------------------------------------------------------------------------------

def measure_farm(kernels: int, args: argparse.Namespace, echo_ports: list[int],
                 tenants: list[str], console: Console) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="net-bench-") as scratch, \
            running_farm(["--kernels", str(kernels)], Path(scratch), "never") as farm:
        control = farm.details["control"]
        procs: list[multiprocessing.process.BaseProcess] = []
        try:
            with Client(control) as client:
                cmap = client.cluster_map()
            meter = CpuMeter([k["pid"] for k in cmap["kernels"]], include_descendants=False)
            barrier = context.Barrier(args.processes + 1)
            pipes = []
            for index in range(args.processes):
                receive, send = context.Pipe(duplex=False)
                plan = WorkerPlan(index, control, echo_ports, tenants, args.concurrency,
                                  args.warmup, args.duration)
                proc = context.Process(target=worker, args=(plan, barrier, send), daemon=True)
                proc.start()
                send.close()
                procs.append(proc)
                pipes.append(receive)
            cpu = {}
            for phase in PHASES:
                with console.status(f"{kernels} kernel(s): {phase} for "
                                    f"{args.warmup:g}+{args.duration:g} s"):
                    barrier.wait(timeout=START_DEADLINE_S)
                    time.sleep(args.warmup)  # the workers count nothing before this
                    meter.start()
                    time.sleep(args.duration)
                    cpu[phase] = meter.stop()
            worker_results = [pipe.recv() for pipe in pipes]
            for proc in procs:
                proc.join(START_DEADLINE_S)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
    rows = []
    for phase in PHASES:
        parts = [PhaseResult(**result[phase]) for result in worker_results]
        latencies = Histogram()
        for part in parts:
            latencies.merge(Histogram.from_dict(part.latencies))
        ops = sum(part.ops for part in parts)
        rows.append({
            "kernels": kernels,
            "phase": phase,
            "ops": ops,
            "ops_per_s": ops / args.duration,
            "p50_ms": latencies.percentile(50) / 1e6 if ops else 0.0,
            "p99_ms": latencies.percentile(99) / 1e6 if ops else 0.0,
            "errors": sum(part.errors for part in parts),
            "first_error": next((p.first_error for p in parts if p.first_error), ""),
            "kernel_cpu_s": cpu[phase],
            "kernel_cpu_pct": 100.0 * cpu[phase] / args.duration,
            "kernel_cpu_us_per_op": 1e6 * cpu[phase] / ops if ops else 0.0,
            "tenants_per_kernel": tenants_per_kernel(cmap, tenants),
            "calls_in_flight": args.processes * args.concurrency,
        })
    return rows


# -- reporting ----------------------------------------------------------------------------------

def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="net through the farm (127.0.0.1 echo peer)")
    # "kernel µs/op" is the kernels' CPU per operation (all kernels together): what an
    # operation costs the farm whether or not the clients kept the kernels busy.
    for column in ("kernels", "phase", "ops/s", "p50 ms", "p99 ms", "kernel CPU %",
                   "kernel µs/op", "tenants/kernel", "err"):
        out.add_column(column, justify="left" if column == "phase" else "right",
                       no_wrap=True)
    for row in rows:
        out.add_row(
            str(row["kernels"]), PHASE_LABELS[row["phase"]], f"{row['ops_per_s']:,.0f}",
            f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['kernel_cpu_pct']:.0f}",
            f"{row['kernel_cpu_us_per_op']:.0f}",
            "/".join(str(n) for n in row["tenants_per_kernel"].values()),
            str(row["errors"]))
    return out


def parse_kernels(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kernels is a list like 1,2, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("kernel counts must be positive")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0,
                        help="timed seconds per phase (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="untimed seconds before each phase (default %(default)s)")
    parser.add_argument("--kernels", type=parse_kernels, default=[1, 2],
                        help="farm sizes to measure, comma-separated (default 1,2)")
    parser.add_argument("--processes", type=int, default=3, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="calls in flight per client process (one socket each)")
    parser.add_argument("--tenants", type=int, default=64, help="tenant namespaces")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON")
    args = parser.parse_args(argv)
    if min(args.processes, args.concurrency, args.tenants) < 1 or args.duration <= 0:
        parser.error("--processes, --concurrency, --tenants and --duration must be positive")

    console = Console(width=max(120, Console().width))
    host = machine()
    tenants = [f"bench-tenant-{i}" for i in range(args.tenants)]
    rows: list[dict[str, Any]] = []
    with running_echo("bytes", ports=ECHO_PORTS) as echo:
        echo_ports = [port for _, port in echo.addresses]
        for kernels in args.kernels:
            rows += measure_farm(kernels, args, echo_ports, tenants, console)
    console.print(table(rows))

    write_raw(args.out, "net_bench",
              {"duration_s": args.duration, "warmup_s": args.warmup,
               "processes": args.processes, "concurrency": args.concurrency,
               "tenants": args.tenants, "message_bytes": len(MESSAGE),
               "echo_ports": ECHO_PORTS, "rows": rows}, host=host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
