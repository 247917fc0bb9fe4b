"""How long a live scale-out takes, and what the slots that do not move feel meanwhile.

A 1-kernel farm gets ``--volumes`` volumes (one small file each), then an ``fs.stat``
load runs against tenants whose slots stay on kernel 0 through the 1 -> 2 scale-out.  Two
windows of the same length, side by side in one run: without scaling (the baseline) and
with ``kernelfarm scale 2`` started at the window's start.  The scale-out's own duration is
timed from the control call.

    python benchmarks/scale_bench.py [--volumes 10000] [--window 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import kernelfarm.aio
from kernelfarm.bench.layout import plans, spread, streams_needed
from kernelfarm.bench.loadgen import run_load
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import running_farm
from kernelfarm.bench.workloads import prepare
from kernelfarm.partition import key_slot, rebalance_plan
from kernelfarm.partition.table import SlotTable

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOAD_TENANTS = 64
CONNECTIONS, DEPTH = 8, 16


async def create_volumes(control: tuple[str, int], names: list[str], progress: Progress,
                         concurrency: int = 256) -> float:
    """Create every volume with one file, many calls in flight; return the seconds taken."""
    task = progress.add_task("creating volumes", total=len(names))
    started = time.perf_counter()
    async with kernelfarm.aio.Client(control) as client:
        queue = iter(names)

        async def worker() -> None:
            for name in queue:
                await client.fs.mkdir(f"/{name}")
                await client.fs.write_file(f"/{name}/hello", name.encode())
                progress.advance(task)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def untouched(table: SlotTable, names: list[str]) -> list[str]:
    """Tenants whose slot stays where it is when the farm goes from 1 to 2 kernels."""
    moving = {move.slot for move in rebalance_plan(table, [0, 1])}
    return [name for name in names if key_slot(name) not in moving]


def load_window(target: Any, tenants: list[str], window: float,
                on_start: Any = None) -> dict[str, Any]:
    layouts = spread(target.owners(tenants), CONNECTIONS, DEPTH)
    prepared = prepare("fs-stat", target.call, streams_needed(layouts))
    result = run_load(plans(layouts, prepared), duration_s=window, warmup_s=0.5,
                      processes=2, on_window_start=on_start)
    if not result.ops:  # a stall as long as the window: no latency to report
        raise SystemExit(f"no fs.stat completed in the {window:g} s window (errors: "
                         f"{dict(result.errors)}): give --window more seconds")
    histogram = result.histogram
    return {"ops_per_s": result.ops_per_s, "p50_us": histogram.percentile(50) / 1000,
            "p99_us": histogram.percentile(99) / 1000,
            "p999_us": histogram.percentile(99.9) / 1000,
            "errors": dict(result.errors), "ops": result.ops}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=8.0,
                        help="seconds of each measured window")
    parser.add_argument("--fsync", default="always", choices=["always", "batch", "never"])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    console = Console()
    names = [f"vol{i:06d}" for i in range(args.volumes)]
    host = machine()
    with tempfile.TemporaryDirectory(prefix="kf-scale-") as scratch, \
            running_farm(["--kernels", "1"], Path(scratch), args.fsync) as target:
        control = target.details["control"]
        with Progress(console=console) as progress:
            created_s = asyncio.run(create_volumes(control, names, progress))
        console.print(f"created {len(names):,} volumes in {created_s:.1f} s")
        with kernelfarm.Client(control) as admin:
            cmap = admin.cluster_map()
            table = SlotTable.from_ranges(cmap["epoch"], cmap["slots"])
            tenants = untouched(table, names)[:LOAD_TENANTS]
            console.print("baseline window (no scaling) ...")
            baseline = load_window(target, tenants, args.window)
            scale: dict[str, Any] = {}

            def scale_out() -> None:
                started = time.perf_counter()
                scale.update(admin.scale(2))
                scale["wall_s"] = time.perf_counter() - started

            scaler = threading.Thread(target=scale_out)
            console.print("scaling window (1 -> 2 kernels during it) ...")
            during = load_window(target, tenants, args.window, on_start=scaler.start)
            scaler.join()
            moved_volumes = len(names) - len(untouched(table, names))
    results = {"volumes": len(names), "fsync": args.fsync, "create_s": created_s,
               "scale": scale, "moved_volumes": moved_volumes, "window_s": args.window,
               "load": {"tenants": len(tenants), "connections": CONNECTIONS, "depth": DEPTH,
                        "workload": "fs-stat on untouched slots"},
               "baseline": baseline, "during_scale": during}
    write_raw(args.out, "scale_bench", results, host=host)
    table_view = Table(title=f"scale-out 1 -> 2 with {len(names):,} volumes "
                             f"({moved_volumes:,} moved) in {scale['wall_s']:.2f} s")
    for column in ("window", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "errors"):
        table_view.add_column(column, justify="right")
    for label, row in (("baseline", baseline), ("during scale-out", during)):
        table_view.add_row(label, f"{row['ops_per_s']:,.0f}", f"{row['p50_us']:,.0f}",
                           f"{row['p99_us']:,.0f}", f"{row['p999_us']:,.0f}",
                           str(sum(row["errors"].values())))
    console.print(table_view)
    plot(results, args.out / "scale_bench.png")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["baseline", "during scale-out"]
    rows = [results["baseline"], results["during_scale"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(labels, [r["ops_per_s"] for r in rows], color=["#4c72b0", "#dd8452"])
    left.set_ylabel("ops/s (untouched slots)")
    right.bar(labels, [r["p99_us"] for r in rows], color=["#4c72b0", "#dd8452"])
    right.set_ylabel("p99 latency (µs)")
    figure.suptitle(f"scale-out 1 -> 2, {results['volumes']:,} volumes: "
                    f"{results['scale']['wall_s']:.2f} s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
