"""``kernelfarm bench``: partitioned vs locked vs the floor, measured in one run.

Starts every system under test on 127.0.0.1 in turn (see :mod:`kernelfarm.bench.systems`),
drives each workload with the load generator, and writes ``results.json``, ``results.md``
and one throughput plot per workload.  ``--quick`` is the smoke run (fewer worker counts,
short windows; under two minutes on two cores); it writes to ``OUT/quick`` unless
``--out`` is given, so it never overwrites a committed full run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kernelfarm.bench import report, systems
from kernelfarm.bench.workloads import WORKLOADS
from kernelfarm.errors import ConfigError

if TYPE_CHECKING:
    from kernelfarm.bench.runner import BenchOptions, Cell

DEFAULT_OUT = Path("benchmarks/results")
QUICK_DURATION_S = 0.3
QUICK_WARMUP_S = 0.15


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bench", help="benchmark partitioned vs locked kernels against the echo floor",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 and core-count workers, short windows")
    parser.add_argument("--workloads", type=_names(WORKLOADS),
                        help=f"comma-separated (default all: {','.join(WORKLOADS)})")
    parser.add_argument("--systems", type=_names(systems.SYSTEMS),
                        help=f"comma-separated (default all: {','.join(systems.SYSTEMS)})")
    parser.add_argument("--workers", type=_counts,
                        help="comma-separated worker counts (default 1..cores and 2 x cores)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds per row (default 3, quick 0.3)")
    parser.add_argument("--warmup", type=float,
                        help="warm-up seconds per row (default 0.5, quick 0.15)")
    parser.add_argument("--fsync", choices=systems.FSYNC_POLICIES, default="never",
                        help="fs durability policy of the farms (default never: the "
                             "throughput comparison, as on a memory file system)")
    parser.add_argument("--depth", type=int, default=16,
                        help="requests in flight per connection (default 16)")
    parser.add_argument("--connections", type=int, default=4,
                        help="connections per worker (default 4)")
    parser.add_argument("--out", type=Path,
                        help=f"output directory (default {DEFAULT_OUT}, quick "
                             f"{DEFAULT_OUT / 'quick'})")
    parser.set_defaults(handler=run)


def _names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(unknown) or '(empty)'}; choose from {', '.join(allowed)}")
        return names
    return parse


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"worker counts are integers, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts must be positive")
    return counts


def options_from(args: argparse.Namespace) -> BenchOptions:
    # The runner (and what it imports) loads only when a benchmark runs, not for every
    # ``kernelfarm`` command.
    from kernelfarm.bench.runner import BenchOptions, default_workers

    try:
        return BenchOptions(
            workloads=args.workloads or WORKLOADS,
            systems=args.systems or systems.SYSTEMS,
            workers=args.workers or default_workers(quick=args.quick),
            duration_s=args.duration if args.duration is not None else
            (QUICK_DURATION_S if args.quick else 3.0),
            warmup_s=args.warmup if args.warmup is not None else
            (QUICK_WARMUP_S if args.quick else 0.5),
            fsync=args.fsync,
            depth=args.depth,
            connections_per_worker=args.connections,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from kernelfarm.bench.runner import plan, run_bench

    options = options_from(args)
    out = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    console = Console(stderr=True)
    cells, _ = plan(options)
    started = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("starting", total=len(cells))

        def on_cell(cell: Cell, event: str) -> None:
            if event == "start":
                progress.update(task, description=f"{cell.label():<34}")
            else:
                progress.advance(task)

        results = run_bench(options, progress=on_cell)
    paths = report.write_all(results.to_dict(), out)
    wide = Console(width=max(120, Console().width))
    for table in summary(results.rows):
        wide.print(table)
    for skipped in results.skipped:
        if skipped["reason"].startswith("failed"):
            console.print(f"[yellow]not measured:[/] {skipped['system']} x{skipped['workers']} "
                          f"{skipped['workload']}: {skipped['reason']}")
    console.print(f"wrote {', '.join(str(p) for p in paths)} "
                  f"in {time.monotonic() - started:.0f} s")
    return 0


def summary(rows: list[dict[str, Any]]) -> list[Table]:
    """One table per workload, as in results.md."""
    tables: dict[str, Table] = {}
    for row in report.ordered(rows):
        table = tables.get(row["workload"])
        if table is None:
            table = tables[row["workload"]] = Table(title=row["workload"])
            for column in report.COLUMNS:
                table.add_column(column, justify="left" if column == "system" else "right",
                                 no_wrap=column != "errors")
        table.add_row(*report.table_cells(row))
    return list(tables.values())
