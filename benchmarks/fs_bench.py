"""fs on ONE kernel against the echo floor, and restart time with many files (issues 3, 9).

Two parts, both on 127.0.0.1 with real processes:

1. Throughput: fs.stat, create (fs.write_file of a new empty file, then fs.unlink of it:
   the chain alternates, so half the counted requests are creates), 4 KiB pwrite and
   4 KiB pread against a one-kernel farm, then the same load generator, the same request
   chains, against a bare msgpack-rpc echo server (the floor) — via the benchmark runner,
   so the figures mean what ``kernelfarm bench``'s mean.
2. Restart: the asyncio client (many calls in flight) creates N files (default 100,000)
   over a few volumes; then the kernel is killed with SIGKILL (the supervisor restarts
   it) and, separately, the whole farm is stopped and a new ``kernelfarm serve`` starts on
   the same data dir.  Each is timed from the kill/spawn until every volume lists all its
   files again; then the restarted kernel's resident memory is read and a new file is
   written and read back (the farm serves, not only lists).  ``--files 2000000`` is
   issue 9's "a kernel holding 2M files can boot" (``--no-throughput`` skips part 1).

    python benchmarks/fs_bench.py [--duration 3] [--files 100000] [--fsync never,always]
                                  [--no-throughput] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import uvloop
from rich.console import Console
from rich.table import Table

from kernelfarm.bench import report, systems
from kernelfarm.bench.runner import BenchOptions, machine, run_bench, write_raw

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLOADS = ("fs-stat", "fs-create", "fs-write-4k", "fs-read-4k")
RESTART_VOLUMES = 4
PIPELINE = 1000
"""Calls in flight at once while creating the files (one batch, then wait for it)."""
SERVED_TIMEOUT_S = 300.0


def throughput(policy: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    options = BenchOptions(workloads=WORKLOADS, systems=("partitioned", "echo"), workers=(1,),
                           duration_s=args.duration, warmup_s=args.warmup, fsync=policy)
    results = run_bench(options)
    for skipped in results.skipped:
        print(f"not measured: {skipped}", file=sys.stderr)
    return results.rows


def create_files(control: tuple[str, int], files: int) -> float:
    """Create ``files`` empty files, PIPELINE calls in flight on the asyncio client's one
    pipelined connection; returns the seconds taken."""
    import kernelfarm.aio

    names = [f"/r{n % RESTART_VOLUMES}/f{n // RESTART_VOLUMES}"
             for n in range(-(-files // RESTART_VOLUMES) * RESTART_VOLUMES)]

    async def create() -> None:
        async with kernelfarm.aio.Client(control) as client:
            for volume in range(RESTART_VOLUMES):
                await client.fs.mkdir(f"/r{volume}")
            for first in range(0, len(names), PIPELINE):
                await asyncio.gather(*(client.fs.write_file(name, b"")
                                       for name in names[first:first + PIPELINE]))

    started = time.perf_counter()
    uvloop.run(create())
    return time.perf_counter() - started


def kernel_rss(supervisor_pid: int) -> int:
    """Resident bytes of the (one) kernel of the farm whose supervisor is given."""
    (kernel,) = psutil.Process(supervisor_pid).children()
    rss: int = kernel.memory_info().rss
    return rss


def serves_writes(control: tuple[str, int]) -> bool:
    """A file written now reads back: the restarted farm serves, not only lists."""
    from kernelfarm.client import Client

    with Client(control, timeout=30) as client:
        client.fs.write_file("/r0/after-restart", b"served")
        return client.fs.read_file("/r0/after-restart") == b"served"


def served(control: tuple[str, int], expected: int) -> bool:
    """Every restart volume lists all its files (any failure: not yet)."""
    from kernelfarm.client import Client

    try:
        with Client(control, timeout=30) as client:
            listed = sum(len(client.call("fs.listdir", f"/r{v}"))
                         for v in range(RESTART_VOLUMES))
    except Exception:  # restarting: refused, reset, TRYAGAIN past its deadline, ...
        return False
    return listed == expected


def wait_served(control: tuple[str, int], expected: int, since: float) -> float:
    deadline = since + SERVED_TIMEOUT_S
    while not served(control, expected):
        if time.monotonic() > deadline:
            raise TimeoutError(f"files not served again within {SERVED_TIMEOUT_S:g} s")
        time.sleep(0.01)  # polling a restarting farm: there is no event to wait on
    return time.monotonic() - since


def restart(policy: str, files: int) -> dict[str, Any]:
    expected = -(-files // RESTART_VOLUMES) * RESTART_VOLUMES
    with tempfile.TemporaryDirectory(prefix="kernelfarm-fsbench-") as scratch_dir:
        scratch = Path(scratch_dir)
        with systems.running_farm(["--kernels", "1"], scratch, policy) as farm:
            control = farm.details["control"]
            create_s = create_files(control, files)
            supervisor = psutil.Process(farm.server_pids[0])
            kernel = supervisor.children()[0]
            killed = time.monotonic()
            os.kill(kernel.pid, signal.SIGKILL)
            kernel.wait(30)
            kill_s = wait_served(control, expected, killed)
            rss_kill9 = kernel_rss(farm.server_pids[0])
        data_bytes = sum(p.stat().st_size for p in (scratch / "data").rglob("*") if p.is_file())
        spawned = time.monotonic()
        with systems.running_farm(["--kernels", "1"], scratch, policy) as farm:
            boot_s = time.monotonic() - spawned
            farm_s = wait_served(farm.details["control"], expected, spawned)
            rss = kernel_rss(farm.server_pids[0])
            writes = serves_writes(farm.details["control"])
    return {"files": expected, "volumes": RESTART_VOLUMES, "fsync": policy,
            "create_s": create_s, "create_per_s": expected / create_s,
            "kernel_kill9_restart_s": kill_s, "farm_restart_s": farm_s,
            "farm_ready_line_s": boot_s, "data_bytes": data_bytes,
            "kernel_rss_bytes": rss, "kernel_rss_after_kill9_bytes": rss_kill9,
            "serves_writes_after_restart": writes}


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="fs on one kernel vs the echo floor")
    out.add_column("fsync")
    out.add_column("workload")
    for column in report.COLUMNS:
        out.add_column(column, justify="left" if column == "system" else "right")
    for row in report.ordered(rows):
        out.add_row(row["fsync"] or "-", row["workload"], *report.table_cells(row))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="measured s per row")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up s per row")
    parser.add_argument("--files", type=int, default=100_000, help="files for the restart test")
    parser.add_argument("--fsync", default="never",
                        help="comma-separated policies to measure (default never)")
    parser.add_argument("--no-throughput", action="store_true",
                        help="measure only the restart (e.g. with --files 2000000)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON")
    args = parser.parse_args(argv)
    policies = [p for p in args.fsync.split(",") if p]
    if not policies or any(p not in systems.FSYNC_POLICIES for p in policies):
        parser.error(f"--fsync takes {', '.join(systems.FSYNC_POLICIES)}")
    if args.files < RESTART_VOLUMES:
        parser.error(f"--files must be at least {RESTART_VOLUMES}")

    console = Console(width=max(120, Console().width))
    host = machine()
    rows: list[dict[str, Any]] = []
    restarts = []
    for policy in policies:
        if not args.no_throughput:
            with console.status(f"throughput, fsync={policy}"):
                rows += throughput(policy, args)
        with console.status(f"restart with {args.files:,} files, fsync={policy}"):
            restarts.append(restart(policy, args.files))
    if rows:
        console.print(table(rows))
    out = Table(title=f"restart with {args.files:,} files")
    for column in ("fsync", "create files/s", "kill -9 kernel -> served",
                   "new serve -> served", "kernel RSS", "serves writes", "data on disk"):
        out.add_column(column, justify="right")
    for r in restarts:
        out.add_row(r["fsync"], f"{r['create_per_s']:,.0f}", f"{r['kernel_kill9_restart_s']:.2f} s",
                    f"{r['farm_restart_s']:.2f} s", f"{r['kernel_rss_bytes'] / 2**20:.0f} MiB",
                    "yes" if r["serves_writes_after_restart"] else "NO",
                    f"{r['data_bytes'] / 2**20:.1f} MiB")
    console.print(out)

    # A restart-only run keeps the committed throughput figures beside it.
    write_raw(args.out, "fs_bench",
              {"duration_s": args.duration, "warmup_s": args.warmup, "rows": rows,
               "restart": restarts},
              host=host, name="fs_bench_restart" if args.no_throughput else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
