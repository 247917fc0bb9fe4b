"""What the locks cost over RPC: one kernel without and with them, windows interleaved.

``unicpu-locks`` (``--mode locked --threads 1``) is the unicpu kernel with its handlers
wrapped by the lock provider and nothing else (``kernel/process.make_kernel``), so its
CPU per request minus a partitioned kernel's is the locks' cost over RPC.  The bench
measures each system once per workload, one row after another, and a shared machine
whose load changes between two rows moves their CPU per request by more than the wrapper
costs.  Here both farms run at once, their kernels on the same core, and the same load
goes to one, then the other, window by window (ABBA order, so a drift hits both alike);
each window's figure is the kernel process's own CPU (user + system) per request, the
supervisor left out.  Reported per workload: each system's median, and the median and
range of the paired differences (with locks minus without), in ns per request, beside
the wrapper's cost in-process (``handler_cost.py``).

    python benchmarks/lock_cost.py [--workloads fs-stat,fs-read-4k,net-echo]
                                   [--rounds 6] [--duration 1.5] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from kernelfarm.bench import layout, systems
from kernelfarm.bench.cpu import CpuMeter
from kernelfarm.bench.echo import EchoProcess
from kernelfarm.bench.loadgen import Address, run_load
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.workloads import WORKLOADS, prepare

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEMS = ("partitioned", "unicpu-locks")
TENANTS = 8
CONNECTIONS = 4
DEPTH = 16
"""The bench's shape at one worker: 8 tenants, 4 connections x 16 in flight."""


class Farm:
    """One running farm of one kernel: where its tenants' requests go, and its kernel."""

    def __init__(self, target: systems.Target) -> None:
        self.target = target
        kernels = psutil.Process(target.server_pids[0]).children()
        if len(kernels) != 1:
            raise RuntimeError(f"expected one kernel, found {len(kernels)}")
        self.kernel_pid = kernels[0].pid
        tenants = systems.balanced_tenants(target, TENANTS)
        self.layouts = layout.spread(target.owners(tenants), CONNECTIONS, DEPTH)

    def window(self, workload: str, peer: Address | None, duration_s: float,
               warmup_s: float) -> dict[str, Any]:
        """One measured window on freshly prepared streams, as a bench row has (a net
        stream's socket may hold an echo its last window left unread): ops/s, the
        kernel's CPU ns per request, and the requests that got an error or a wrong
        result (reported, as the bench does)."""
        prepared = prepare(workload, self.target.call, layout.streams_needed(self.layouts),
                           echo_address=peer)
        meter = CpuMeter([self.kernel_pid], include_descendants=False)
        try:
            result = run_load(layout.plans(self.layouts, prepared), duration_s=duration_s,
                              warmup_s=warmup_s, on_window_start=meter.start,
                              on_window_end=meter.stop)
        finally:
            prepared.cleanup(self.target.call)
        if not result.ops:
            raise RuntimeError(f"no request answered in a window: errors {result.errors}")
        return {"ops_per_s": result.ops_per_s, "cpu_ns_per_op": meter.seconds / result.ops * 1e9,
                "errors": sum(result.errors.values()), "error_codes": dict(result.errors)}


def measure(workload: str, farms: dict[str, Farm], peer: EchoProcess | None,
            args: argparse.Namespace) -> dict[str, Any]:
    windows: dict[str, list[dict[str, Any]]] = {system: [] for system in SYSTEMS}
    for round_ in range(args.rounds):
        for system in SYSTEMS if round_ % 2 == 0 else SYSTEMS[::-1]:
            windows[system].append(farms[system].window(
                workload, peer.address if peer is not None else None, args.duration,
                args.warmup))
    cpu = {system: [w["cpu_ns_per_op"] for w in windows[system]] for system in SYSTEMS}
    differences = [locked - unlocked for unlocked, locked in
                   zip(cpu["partitioned"], cpu["unicpu-locks"], strict=True)]
    return {
        "windows": windows,
        "median_cpu_ns_per_op": {system: statistics.median(cpu[system]) for system in SYSTEMS},
        "lock_ns_per_op": {"median": statistics.median(differences),
                           "min": min(differences), "max": max(differences)},
    }


def in_process_wrapper_ns(results: Path) -> dict[str, Any]:
    """The fine wrapper's ns per request in-process, from handler_cost.py's last run."""
    path = results / "handler_cost.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return {method: by["fine"] for method, by in
                json.loads(path.read_text())["wrapper_ns"].items()}
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="fs-stat,fs-read-4k,fs-write-4k,net-echo",
                        help=f"comma-separated, of {','.join(WORKLOADS)}")
    parser.add_argument("--rounds", type=int, default=6, help="windows per system")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds before each")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    host = machine()
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lockcost-")))
        peer = stack.enter_context(systems.byte_echo_if_needed(workloads))
        farms = {system: Farm(stack.enter_context(
            systems.running_system(system, 1, scratch / system, "never")))
            for system in SYSTEMS}
        for workload in workloads:
            results[workload] = measure(workload, farms, peer, args)
    wrapper = in_process_wrapper_ns(args.out)
    table = Table(title=f"Kernel CPU per request over RPC, median of {args.rounds} "
                        "interleaved windows each")
    for column in ("workload", "partitioned ns", "unicpu-locks ns", "locks: median ns",
                   "range ns", "ops/s without / with", "errors"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for workload, figures in results.items():
        median = figures["median_cpu_ns_per_op"]
        lock = figures["lock_ns_per_op"]
        rates = [statistics.median(w["ops_per_s"] for w in figures["windows"][s])
                 for s in SYSTEMS]
        table.add_row(workload, f"{median['partitioned']:,.0f}",
                      f"{median['unicpu-locks']:,.0f}", f"{lock['median']:+,.0f}",
                      f"{lock['min']:+,.0f} .. {lock['max']:+,.0f}",
                      f"{rates[0]:,.0f} / {rates[1]:,.0f}",
                      str(sum(w["errors"] for s in SYSTEMS for w in figures["windows"][s])))
    console = Console(width=max(100, Console().width))
    console.print(table)
    if wrapper:
        console.print("the fine wrapper in-process (handler_cost.json): " + ", ".join(
            f"{method} +{ns:,.0f} ns" for method, ns in wrapper.items()))
    write_raw(args.out, "lock_cost", {"in_process_wrapper_ns": wrapper, "workloads": results},
              host=host, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
