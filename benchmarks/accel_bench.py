"""The compiled accelerator against the pure path, side by side in one run (issue 14).

Each round runs :mod:`peers`' one-kernel workloads (``fs.stat``, 16-byte
``fs.write_file`` with ``fsync = "always"``, net-echo; same shape, same pinning: 50
connections x 16 in flight, the kernel on ``--server-core``, its load on
``--load-core``) twice: on a pure farm, then on a farm whose processes have the built
accelerator (``.accel/``, ``./kf accel``) first on ``PYTHONPATH``, as
``KERNELFARM_ACCEL=1 ./kf serve`` runs it.  Each compiled farm is asked which modules
its kernel runs compiled, so a stale or missing build cannot pass for a compiled run.
CPU per request is the kernel process's user+system time over the window: the figure a
busy machine disturbs least.  Writes ``accel_bench.json`` under ``--out``.

    python benchmarks/accel_bench.py [--duration 3] [--rounds 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kernelfarm import accel
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import running_farm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".accel"
WORKLOADS = ("fs.stat", "fs.write_file", "net-echo")


def compiled_environment() -> contextlib.AbstractContextManager[None]:
    """Processes started meanwhile load the compiled modules (this one stays pure)."""
    return sources_first(BUILD)


@contextlib.contextmanager
def sources_first(where: Path) -> Iterator[None]:
    """Processes started meanwhile import kernelfarm from ``where`` first (a build of
    the compiled modules, or another tree's sources), never from their working
    directory (``PYTHONSAFEPATH``); this one is left as it is."""
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(where),
                                                             saved["PYTHONPATH"]]))
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def compiled_in_kernel(scratch: Path) -> list[str]:
    """What a kernel started now runs compiled (``kernel.stats``' ``compiled``)."""
    with running_farm(["--kernels", "1"], scratch, "never") as farm:
        modules: list[str] = farm.call("kernel.stats")["compiled"]
        return modules


def one_round(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    pure = peers.farm_rows(args, scratch / "pure")
    with compiled_environment():
        modules = compiled_in_kernel(scratch / "check")
        if modules != list(accel.MODULES):
            raise SystemExit(f"the kernel runs {modules or 'nothing'} compiled, not "
                             f"{list(accel.MODULES)}: build it with ./kf accel")
        compiled = peers.farm_rows(args, scratch / "compiled")
    by_name = {row["name"]: row for row in compiled}
    saved = {row["name"]: 1 - by_name[row["name"]]["cpu_us_per_op"] / row["cpu_us_per_op"]
             for row in pure if row["cpu_us_per_op"]}
    return {"pure": pure, "compiled": compiled, "cpu_saved": saved}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="measured s per row")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up s per row")
    parser.add_argument("--rounds", type=int, default=2, help="repeat the whole sequence")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=16, help="requests in flight each")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--out", type=Path, default=peers.RESULTS_DIR)
    args = parser.parse_args(argv)
    console = Console(width=max(100, Console().width))
    host = machine()
    rounds = []
    for index in range(args.rounds):
        with console.status(f"round {index + 1} of {args.rounds}"), \
                tempfile.TemporaryDirectory(prefix="kernelfarm-accel-") as where:
            rounds.append(one_round(args, Path(where)))
    table = Table(title="one kernel, pure vs compiled, side by side")
    for column in ("round", "workload", "pure ops/s", "compiled ops/s", "pure CPU µs/op",
                   "compiled CPU µs/op", "CPU saved"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for index, result in enumerate(rounds, 1):
        compiled = {row["name"]: row for row in result["compiled"]}
        for row in result["pure"]:
            other = compiled[row["name"]]
            table.add_row(str(index), row["name"], f"{row['ops_per_s']:,.0f}",
                          f"{other['ops_per_s']:,.0f}", f"{row['cpu_us_per_op']:.2f}",
                          f"{other['cpu_us_per_op']:.2f}",
                          f"{result['cpu_saved'].get(row['name'], 0):.0%}")
    console.print(table)
    write_raw(args.out, "accel_bench", {"modules": list(accel.MODULES), "rounds": rounds},
              host=host, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
