"""One kernel against its peers, side by side in one run: the echo floor and Redis (issue 14).

Every server is pinned to core 0 and its load to core 1 (``--server-core``/``--load-core``),
with the same shape: 50 connections x 16 requests in flight.  Measured, in turn, by one
load generator (:mod:`kernelfarm.bench.loadgen`) and one CPU meter
(:mod:`kernelfarm.bench.cpu`):

    echo            the bare uvloop msgpack-rpc echo (the floor), fed fs.stat requests
    fs.stat         one kernel (``serve --kernels 1``) stat-ing an existing file
    fs.write_file   one kernel writing 16 bytes per request, ``fsync = "always"``
                    (every stream its own file, all in one volume: one journal, as Redis
                    has one append-only file)
    net-echo        ``net.send`` of 64 bytes then ``net.recv`` through the kernel to a host
                    byte echo; kernel CPU per round trip (two requests)
    redis GET/SET   ``redis-server`` (``appendonly yes``, ``appendfsync always``) driven by
                    ``redis-benchmark -c 50 -P 16 -d 16``, when both are on PATH

``--rounds N`` repeats the whole sequence so the noise shows; each ratio is taken within
a round.  Writes ``peers.json`` (raw), ``peers.md`` (table) and ``peers.png`` under ``--out``.

    python benchmarks/peers.py [--duration 3] [--rounds 1] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from kernelfarm.bench import workloads
from kernelfarm.bench.cpu import CpuMeter
from kernelfarm.bench.echo import running_echo
from kernelfarm.bench.loadgen import Address, ConnectionPlan, run_load
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import Target, running_farm
from kernelfarm.supervisor.launch import end_process

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VOLUME = "peers"
STAT_PATH = f"/{VOLUME}/stat.dat"
PAYLOAD = b"0123456789abcdef"
"""16 bytes, as redis-benchmark's ``-d 16`` value."""
NET_TENANTS = 4
"""Namespaces for net-echo: 800 sockets spread under ``net.max_sockets`` each."""
REDIS_START_S = 10.0
REDIS_RATES = {"get": 800_000, "set": 400_000}
"""Requests per second to size redis-benchmark's ``-n`` to about ``--duration`` seconds."""
GOALS = {"fs.stat / echo": 0.5, "fs.write_file / redis SET": 0.6}


def uniform(address: Address, connections: int, depth: int,
            chain: Any) -> list[ConnectionPlan]:
    """``connections`` x ``depth`` slots; ``chain(c, s)`` is slot ``s`` of connection ``c``."""
    return [ConnectionPlan(address, [chain(c, s) for s in range(depth)])
            for c in range(connections)]


def measure(name: str, plans: list[ConnectionPlan], pids: Sequence[int],
            args: argparse.Namespace, per: int = 1) -> dict[str, Any]:
    """Drive ``plans`` from the load core; CPU of ``pids`` (not descendants) per ``per`` ops."""
    meter = CpuMeter(pids, include_descendants=False)
    result = run_load(plans, duration_s=args.duration, warmup_s=args.warmup,
                      processes=args.load_processes, cores=[args.load_core],
                      on_window_start=meter.start, on_window_end=meter.stop)
    summary = result.histogram.summary_us()
    ops = max(result.ops, 1)
    return {"name": name, "ops_per_s": result.ops_per_s / per, "p50_us": summary["p50_us"],
            "p99_us": summary["p99_us"], "cpu_us_per_op": meter.seconds / ops * per * 1e6,
            "errors": result.errors, "ops": result.ops // per}


def echo_row(args: argparse.Namespace) -> dict[str, Any]:
    with running_echo("msgpack", cpu=args.server_core) as echo:
        plans = uniform(echo.address, args.connections, args.depth,
                        lambda c, s: [("fs.stat", [STAT_PATH])])
        return measure("echo", plans, [echo.pid], args)


def workload(name: str, farm: Target, peer: Address,
             args: argparse.Namespace) -> tuple[list[ConnectionPlan], int, Callable[[], None]]:
    """The plans of ``name`` on a one-kernel farm, requests per counted op, and a cleanup."""
    address = farm.addresses[0]
    call = farm.call
    if name != "net-echo":
        try:
            call("fs.mkdir", f"/{VOLUME}")
        except FileExistsError:
            pass  # made for an earlier workload of this farm
        call("fs.write_file", STAT_PATH, b"kernelfarm")
    if name == "fs.stat":
        return uniform(address, args.connections, args.depth,
                       lambda c, s: [("fs.stat", [STAT_PATH])]), 1, lambda: None
    if name == "fs.write_file":
        return uniform(address, args.connections, args.depth, lambda c, s: [
            ("fs.write_file", [f"/{VOLUME}/w{c}-{s}", PAYLOAD])]), 1, lambda: None
    streams = -(-args.connections * args.depth // NET_TENANTS)
    tenants = [f"{VOLUME}-net{i}" for i in range(NET_TENANTS)]
    prepared = workloads.prepare("net-echo", call, dict.fromkeys(tenants, streams),
                                 echo_address=peer)
    plans = uniform(address, args.connections, args.depth, lambda c, s: prepared.chain(
        tenants[(c * args.depth + s) % NET_TENANTS], (c * args.depth + s) // NET_TENANTS))
    return plans, 2, lambda: prepared.cleanup(call)


def farm_rows(args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    """fs.stat, 16-byte write_file (fsync always) and net-echo on a one-kernel farm."""
    rows = []
    with running_farm(["--kernels", "1"], scratch, "always") as farm, \
            running_echo("bytes", cpu=args.load_core) as peer:
        kernel = psutil.Process(farm.server_pids[0]).children()[0]
        if kernel.cpu_affinity() != [args.server_core]:
            raise SystemExit(f"the kernel runs on {kernel.cpu_affinity()}, not core "
                             f"{args.server_core}")
        # The kernel's syncer runs its fdatasyncs (sync-behind): its CPU is the kernel's,
        # as Redis's fsync is Redis's (a snapshot child's would not be: not counted).
        server = [kernel.pid, *(p.pid for p in kernel.children() if p.name() == "kf-syncer")]
        for name in ("fs.stat", "fs.write_file", "net-echo"):
            plans, per, cleanup = workload(name, farm, peer.address, args)
            try:
                rows.append(measure(name, plans, server, args, per=per))
            finally:
                cleanup()
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_rows(args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    """GET and SET (appendfsync always) from redis-benchmark, on the same cores and shape."""
    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", str(args.server_core), "redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync",
         "always", "--dir", str(scratch), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + REDIS_START_S
        while True:  # no readiness signal to wait on: poll the port against a deadline
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.02)
        rows = []
        for test in ("set", "get"):  # set first: get reads the key set wrote
            requests = int(REDIS_RATES[test] * args.duration)
            meter = CpuMeter([server.pid], include_descendants=True)
            meter.start()
            out = subprocess.run(
                ["taskset", "-c", str(args.load_core), "redis-benchmark", "-h", "127.0.0.1",
                 "-p", str(port), "-c", str(args.connections), "-P", str(args.depth),
                 "-n", str(requests), "-d", str(len(PAYLOAD)), "-t", test, "--csv"],
                check=True, capture_output=True, text=True).stdout
            meter.stop()
            record = next(csv.DictReader(io.StringIO(out)))
            rps = float(record["rps"])
            rows.append({"name": f"redis {test.upper()}", "ops_per_s": rps,
                         "p50_us": float(record.get("p50_latency_ms") or 0) * 1000,
                         "p99_us": float(record.get("p99_latency_ms") or 0) * 1000,
                         "cpu_us_per_op": meter.seconds / requests * 1e6,
                         "errors": {}, "ops": requests})
        return rows
    finally:
        end_process(server, timeout=REDIS_START_S)


def ratios(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Throughput ratios, and the same by CPU per request (peer's / kernel's), which a
    busy machine disturbs less: a server that waits for its core serves less but does
    not spend more per request."""
    by = {row["name"]: row["ops_per_s"] for row in rows}
    cpu = {row["name"]: row["cpu_us_per_op"] for row in rows}
    out = {}
    for ours, peer in (("fs.stat", "echo"), ("fs.write_file", "redis SET"),
                       ("fs.stat", "redis GET")):
        if by.get(peer) and cpu.get(ours):
            out[f"{ours} / {peer}"] = by[ours] / by[peer]
            out[f"{ours} / {peer}, by CPU per request"] = cpu[peer] / cpu[ours]
    return out


def one_round(args: argparse.Namespace, redis: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kernelfarm-peers-") as where:
        scratch = Path(where)
        rows = [echo_row(args), *farm_rows(args, scratch / "farm")]
        if redis:
            (scratch / "redis").mkdir()
            rows += redis_rows(args, scratch / "redis")
    return {"rows": rows, "ratios": ratios(rows)}


def markdown(rounds: list[dict[str, Any]]) -> str:
    lines = ["| round | server | ops/s | p50 µs | p99 µs | server CPU µs/op |",
             "|---:|---|---:|---:|---:|---:|"]
    for index, result in enumerate(rounds, 1):
        for row in result["rows"]:
            unit = "/round trip" if row["name"] == "net-echo" else ""
            lines.append(f"| {index} | {row['name']} | {row['ops_per_s']:,.0f}{unit} | "
                         f"{row['p50_us']:,.0f} | {row['p99_us']:,.0f} | "
                         f"{row['cpu_us_per_op']:.2f} |")
    lines += ["", "| round | ratio | value | goal |", "|---:|---|---:|---:|"]
    for index, result in enumerate(rounds, 1):
        for name, value in result["ratios"].items():
            goal = GOALS.get(name)
            lines.append(f"| {index} | {name} | {value:.2f} | "
                         f"{f'>= {goal:.1f}' if goal else '-'} |")
    return "\n".join(lines) + "\n"


def plot(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["name"] for row in rounds[0]["rows"]]
    figure, axes = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(rounds)
    for index, result in enumerate(rounds):
        values = {row["name"]: row["ops_per_s"] for row in result["rows"]}
        axes.bar([i + index * width for i in range(len(names))],
                 [values.get(name, 0) for name in names], width, label=f"round {index + 1}")
    axes.set_xticks([i + width * (len(rounds) - 1) / 2 for i in range(len(names))], names)
    axes.set_ylabel("ops/s (net-echo: round trips/s)")
    axes.set_title("one core each, 50 connections x 16 in flight")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="measured s per row")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up s per row")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole sequence")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=16, help="requests in flight each")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--no-redis", action="store_true", help="skip Redis even if present")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    redis = not args.no_redis and all(shutil.which(p) for p in ("redis-server",
                                                                 "redis-benchmark", "taskset"))
    console = Console(width=max(100, Console().width))
    host = machine()
    rounds = []
    for index in range(args.rounds):
        with console.status(f"round {index + 1} of {args.rounds}"):
            rounds.append(one_round(args, redis))
    table = Table(title="one core each, side by side")
    for column in ("round", "server", "ops/s", "p50 µs", "p99 µs", "CPU µs/op"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for index, result in enumerate(rounds, 1):
        for row in result["rows"]:
            table.add_row(str(index), row["name"], f"{row['ops_per_s']:,.0f}",
                          f"{row['p50_us']:,.0f}", f"{row['p99_us']:,.0f}",
                          f"{row['cpu_us_per_op']:.2f}")
    console.print(table)
    for index, result in enumerate(rounds, 1):
        console.print(f"round {index}: " + ", ".join(
            f"{name} = {value:.2f}" for name, value in result["ratios"].items()))
    write_raw(args.out, "peers", {"redis": redis, "rounds": rounds}, host=host, args=args)
    (args.out / "peers.md").write_text(markdown(rounds))
    plot(rounds, args.out / "peers.png")
    console.print(f"table and plot: {args.out}/peers.md, peers.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
