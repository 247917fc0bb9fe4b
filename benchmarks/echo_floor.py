"""The floor: the load generator against a bare uvloop msgpack-rpc echo server.

Every kernel figure is read against this: the most a one-core Python server can serve
when a request costs nothing but the protocol.  The server is pinned to one core and the
client processes to the others, so the server's CPU per request (measured with psutil
over the window) is the floor's cost whatever the client could drive; the throughput
column is what this machine's client cores actually drove.

    python benchmarks/echo_floor.py [--duration 3] [--shapes 50x1,50x16,8x512] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from kernelfarm.bench.cpu import CpuMeter
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.echo import running_echo
from kernelfarm.bench.loadgen import ConnectionPlan, run_load

DEFAULT_SHAPES = "50x1,50x16,8x512"
"""One request at a time per connection; moderate pipelining; big pipelined batches."""
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_shape(text: str) -> tuple[int, int]:
    connections, _, depth = text.partition("x")
    try:
        shape = int(connections), int(depth)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is CONNECTIONSxDEPTH, not {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs positive numbers")
    return shape


def measure(shape: tuple[int, int], args: argparse.Namespace, server_cpu: int | None,
            client_cpus: list[int] | None) -> dict[str, Any]:
    connections, depth = shape
    with running_echo(cpu=server_cpu) as echo:
        chain = [("echo", [b"x"])]
        plans = [ConnectionPlan(echo.address, [chain] * depth) for _ in range(connections)]
        meter = CpuMeter([echo.pid])
        result = run_load(plans, duration_s=args.duration, warmup_s=args.warmup,
                          processes=args.processes, cores=client_cpus,
                          on_window_start=meter.start, on_window_end=meter.stop)
    ops = max(result.ops, 1)
    return {
        "system": "echo",
        "workload": "echo",
        "workers": 1,
        "shape": f"{connections}x{depth}",
        "connections": connections,
        "depth": depth,
        "ops": result.ops,
        "errors": result.errors,
        "duration_s": result.duration_s,
        "ops_per_s": result.ops_per_s,
        **result.histogram.summary_us(),
        "cpu_s_per_op": meter.seconds / ops,
        "server_cpu_s": meter.seconds,
        "client_cpu_s_per_op": result.client_cpu_s / ops,
        "lost_connections": result.lost_connections,
        "histogram": result.histogram.to_dict(),
    }


def table(rows: list[dict[str, Any]]) -> Table:
    # "srv max/s" is what the server core could serve if the client kept it busy:
    # 1 / its CPU seconds per request.
    out = Table(title="msgpack-rpc echo floor (one pinned server core)")
    for column in ("shape", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "srv ns/op",
                   "srv max/s", "cli ns/op", "err"):
        out.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        server_ns = row["cpu_s_per_op"] * 1e9
        out.add_row(
            row["shape"], f"{row['ops_per_s']:,.0f}", f"{row['p50_us']:,.0f}",
            f"{row['p99_us']:,.0f}", f"{row['p999_us']:,.0f}", f"{server_ns:,.0f}",
            f"{1e9 / server_ns:,.0f}" if server_ns else "-",
            f"{row['client_cpu_s_per_op'] * 1e9:,.0f}", str(sum(row["errors"].values())))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per shape")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per shape")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="comma-separated CONNECTIONSxDEPTH list (default %(default)s)")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON")
    args = parser.parse_args(argv)
    shapes = [parse_shape(text) for text in args.shapes.split(",")]

    cores = sorted(psutil.Process().cpu_affinity() or [])
    # The server gets the last core to itself; the clients share the rest.
    server_cpu = cores[-1] if len(cores) > 1 else None
    client_cpus = cores[:-1] if len(cores) > 1 else None

    console = Console(width=max(100, Console().width))
    host = machine()
    rows = []
    for shape in shapes:
        with console.status(f"echo floor {shape[0]}x{shape[1]} for {args.duration:g} s"):
            rows.append(measure(shape, args, server_cpu, client_cpus))
    console.print(table(rows))

    write_raw(args.out, "echo_floor",
              {"server_cpu": server_cpu, "client_cpus": client_cpus,
               "duration_s": args.duration, "warmup_s": args.warmup,
               "processes": args.processes, "rows": rows}, host=host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
