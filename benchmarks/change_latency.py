"""The round trip of one change against one stat, sequential, under each fsync policy.

Issue 12's small-file and ``cp -a`` rows are bound by round trips: a file costs two farm
calls that change something (its create, its close's writes), each waiting for the
kernel's group commit (:mod:`kernelfarm.kernel.commit`).  This probe asks what a change's
round trip costs beyond a read's: one asyncio client (the library's own,
:func:`kernelfarm.rpc.client.connect`) calls a one-kernel farm one request at a time --
nothing else in flight, so every latency is a whole round trip -- ``--calls`` times
each:

    stat        fs.stat of an existing file (the read: no group commit)
    create      fs.create(exclusive) of a new name
    pwrite      fs.pwrite of 100 bytes at offset 0 of one file
    write_file  fs.write_file of 16 bytes to one file
    chmod       fs.chmod of one file

under ``fsync = "never"``, ``"batch"`` and ``"always"`` (a fresh farm for each), in
blocks that take the kinds in turn, so the machine's noise falls on all of them alike;
with ``--against DIR``, a second farm runs the kernelfarm sources in DIR (say a ``git
archive`` of main before a change) and the two farms take each block in turn: a
before/after measured side by side.  Reported: the median and p99 in µs, and the
kernel's CPU per call (its syncer's included), which moves less with the machine's load
than the wall clock.

    python benchmarks/change_latency.py [--calls 600] [--rounds 3] [--policies never,always]
        [--against DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import psutil
import uvloop
from rich.console import Console
from rich.table import Table

from kernelfarm.bench.runner import write_raw
from kernelfarm.bench.systems import FSYNC_POLICIES, running_farm
from kernelfarm.rpc.client import RpcClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accel_bench import sources_first

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VOLUME = "latency"
KINDS = ("stat", "create", "pwrite", "write_file", "chmod")
BLOCK = 50
"""Calls of one kind in a row before the next kind takes its turn."""

def on_cpu_ns(pids: list[int]) -> int:
    """Time ``pids`` ran on a CPU, in ns (``/proc/PID/schedstat``: exact, where the
    ``cpu_times`` the other benchmarks read tick every 10 ms -- longer than a block of
    calls here)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/schedstat", "rb") as fh:
            total += int(fh.read().split()[0])
    return total


Call = Callable[[RpcClientConnection, int], Awaitable[Any]]


def calls(prefix: str) -> dict[str, Call]:
    """One request of each kind; ``i`` numbers the call (create needs a new name)."""
    base = f"/{VOLUME}/{prefix}"
    return {
        "stat": lambda c, i: c.call("fs.stat", f"{base}-file"),
        "create": lambda c, i: c.call("fs.create", f"{base}-new{i}", 0o644, True),
        "pwrite": lambda c, i: c.call("fs.pwrite", f"{base}-file", 0, b"p" * 100),
        "write_file": lambda c, i: c.call("fs.write_file", f"{base}-small", b"0123456789abcdef"),
        "chmod": lambda c, i: c.call("fs.chmod", f"{base}-file", 0o600 | (i & 1) << 2),
    }


class Farm:
    """One farm under test: its label, its kernel's address and pids, a connection."""

    def __init__(self, label: str, address: tuple[str, int], pids: list[int]) -> None:
        self.label = label
        self.address = address
        self.pids = pids
        self.latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.cpu_ns: dict[str, int] = dict.fromkeys(KINDS, 0)

    def figures(self) -> dict[str, dict[str, Any]]:
        return {kind: {"median_us": statistics.median(values),
                       "p99_us": statistics.quantiles(values, n=100)[98],
                       "cpu_us_per_call": self.cpu_ns[kind] / len(values) / 1000,
                       "calls": len(values)}
                for kind, values in self.latencies.items()}


async def timed(farms: list[Farm], count: int, rounds: int) -> None:
    """Blocks of :data:`BLOCK` calls of each kind, the farms taking each block in turn
    (side by side: the machine's noise falls on both alike)."""
    conns = [await connect(*farm.address) for farm in farms]
    try:
        kinds = calls("p")
        for conn in conns:
            await conn.call("fs.write_file", f"/{VOLUME}/p-file", b"x" * 100)
            await conn.call("fs.write_file", f"/{VOLUME}/p-small", b"y")
        numbers = iter(range(1 << 30))
        for _ in range(rounds):
            for start in range(0, count, BLOCK):
                for kind, call in kinds.items():
                    for farm, conn in zip(farms, conns, strict=True):
                        latencies = farm.latencies[kind]
                        before = on_cpu_ns(farm.pids)
                        for _ in range(min(BLOCK, count - start)):
                            began = time.perf_counter_ns()
                            await call(conn, next(numbers))
                            latencies.append((time.perf_counter_ns() - began) / 1000)
                        farm.cpu_ns[kind] += on_cpu_ns(farm.pids) - before
    finally:
        for conn in conns:
            conn.close()


def measure(policy: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The figures of each farm under ``policy``: this tree's, and ``--against``'s."""
    trees: dict[str, Path | None] = {"this": None}
    if args.against is not None:
        trees["against"] = args.against
    with contextlib.ExitStack() as stack:
        farms = []
        for label, tree in trees.items():
            with contextlib.nullcontext() if tree is None else sources_first(tree):
                target = stack.enter_context(
                    running_farm(["--kernels", "1"], scratch / label, policy))
            target.call("fs.mkdir", f"/{VOLUME}")
            kernel = psutil.Process(target.server_pids[0]).children()[0]
            pids = [kernel.pid,
                    *(p.pid for p in kernel.children() if p.name() == "kf-syncer")]
            farms.append(Farm(label, target.addresses[0], pids))
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(timed(farms, args.calls, args.rounds))
        return {farm.label: farm.figures() for farm in farms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600, help="calls of each kind per round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--policies", default=",".join(("never", "batch", "always")))
    parser.add_argument("--against", type=Path, default=None,
                        help="also a farm from the kernelfarm sources in this directory "
                             "(e.g. a git archive of an older commit), side by side")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    for policy in policies:
        if policy not in FSYNC_POLICIES:
            parser.error(f"unknown fsync policy {policy!r}")
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kf-latency-") as scratch:
        for policy in policies:
            figures[policy] = measure(policy, args, Path(scratch) / policy)
    table = Table(title=f"One call at a time, µs: median / p99 (kernel CPU per call), "
                        f"{args.calls * args.rounds} calls each")
    table.add_column("fsync")
    table.add_column("farm")
    for kind in KINDS:
        table.add_column(kind, justify="right")
    for policy, farms in figures.items():
        for label, rows in farms.items():
            table.add_row(policy, label, *(
                f"{rows[k]['median_us']:.0f} / {rows[k]['p99_us']:.0f} "
                f"({rows[k]['cpu_us_per_call']:.1f})" for k in KINDS))
    Console().print(table)
    write_raw(args.out, "change_latency", {"calls": args.calls, "rounds": args.rounds,
                                           "against": str(args.against or ""),
                                           "figures": figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
