"""Small reads on one volume while the same kernel snapshots a big one, against none.

One kernel holds two volumes: ``big`` (``--mib`` MiB of file data, 512 by default) and
``small`` (one 4 KiB file).  A client reads the small file in a loop and records each
call's latency, twice in one run: while nothing else happens (*idle*), and from the
moment a write makes ``big`` snapshot until the snapshot is installed (*snapshot*).
Before snapshots were written by a forked child, the second window held the kernel's
loop for the whole snapshot; the p99 and max columns show what a reader sees now.

    python benchmarks/snapshot_bench.py [--mib 512] [--out DIR]

Writes ``snapshot_bench.json``, ``snapshot_bench.md`` and ``snapshot_bench.png`` under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import served_farm
from kernelfarm.client import Client

MIB = 1024 * 1024
CHUNK = 4 * MIB
FILE_MIB = 64
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def config(mib: int) -> str:
    # The journal of ``big`` passes the snapshot threshold only with the trigger write.
    # Auth off, as in every data-path benchmark (kernelfarm.bench.systems): its cost is
    # one hello per connection, measured by auth_bench.py.
    return (f"[auth]\nrequired = false\n[fs]\nvolume_quota_bytes = {(mib + 256) * MIB}\n"
            f"snapshot_journal_bytes = {mib * MIB + MIB}\nreserve_bytes = 0\n"
            f"[supervisor]\nheartbeat_timeout = 60.0\n")


def fill(client: Client, mib: int) -> None:
    client.fs.mkdir("/big")
    for n in range(mib // FILE_MIB + (1 if mib % FILE_MIB else 0)):
        path, size = f"/big/f{n}", min(FILE_MIB, mib - n * FILE_MIB) * MIB
        client.fs.write_file(path, b"")
        block = bytes([n % 251]) * CHUNK
        for offset in range(0, size, CHUNK):
            client.fs.pwrite(path, offset, block[:min(CHUNK, size - offset)])


class Reader(threading.Thread):
    """Reads ``/small/f`` in a loop, one call at a time, recording latencies."""

    def __init__(self, control: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.client = Client(control)
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (start, seconds)

    def run(self) -> None:
        with self.client:
            while not self.stop.is_set():
                started = time.perf_counter()
                self.client.fs.read_file("/small/f")
                self.samples.append((started, time.perf_counter() - started))


def snapshots(client: Client) -> int:
    (stats,) = client.call_all("kernel.stats")
    done: int = stats["subsystems"]["fs"]["snapshots"]
    return done


def window(control: tuple[str, int], client: Client, trigger: bool,
           idle_s: float) -> tuple[list[float], float]:
    """Latencies (ms) of the reads in one window, and the window's length (s)."""
    reader = Reader(control)
    reader.start()
    time.sleep(0.2)  # the reader's connection is up and warm
    start = time.perf_counter()
    if trigger:
        before = snapshots(client)
        client.fs.write_file("/big/trigger", b"t" * (2 * MIB))
        while snapshots(client) == before:
            time.sleep(0.005)
    else:
        time.sleep(idle_s)
    end = time.perf_counter()
    reader.stop.set()
    reader.join()
    return [round(d * 1000, 3) for s, d in reader.samples if start <= s < end], end - start


def summary(latencies: list[float], seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"reads": len(ordered), "seconds": round(seconds, 3),
            "p50_ms": round(pct(0.50), 3), "p99_ms": round(pct(0.99), 3),
            "max_ms": round(ordered[-1], 3), "mean_ms": round(statistics.mean(ordered), 3)}


def run(mib: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as scratch, \
            served_farm(Path(scratch), config(mib), ["--kernels", "1"]) as farm, \
            Client(farm.control) as client:
        client.fs.mkdir("/small")
        client.fs.write_file("/small/f", b"s" * 4096)
        loading = time.perf_counter()
        fill(client, mib)
        load_s = time.perf_counter() - loading
        snap, snap_s = window(farm.control, client, trigger=True, idle_s=0)
        idle, idle_s = window(farm.control, client, trigger=False, idle_s=snap_s)
    return {"volume_mib": mib,
            "fill_seconds": round(load_s, 1), "idle": summary(idle, idle_s),
            "snapshot": summary(snap, snap_s), "idle_ms": idle, "snapshot_ms": snap}


def table(result: dict[str, Any]) -> Table:
    out = Table(title=f"small reads beside a {result['volume_mib']} MiB snapshot, one kernel")
    for column in ("window", "seconds", "reads", "p50 ms", "p99 ms", "max ms"):
        out.add_column(column, justify="right")
    for name in ("idle", "snapshot"):
        row = result[name]
        out.add_row(name, str(row["seconds"]), str(row["reads"]), str(row["p50_ms"]),
                    str(row["p99_ms"]), str(row["max_ms"]))
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Small reads beside a {result['volume_mib']} MiB snapshot (one kernel)", "",
             "| window | seconds | reads | p50 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|"]
    for name in ("idle", "snapshot"):
        row = result[name]
        lines.append(f"| {name} | {row['seconds']} | {row['reads']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['max_ms']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("idle", "snapshot"):
        ordered = sorted(result[f"{name}_ms"])
        ax.plot([i / len(ordered) for i in range(len(ordered))], ordered, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("fraction of reads")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"4 KiB reads while a {result['volume_mib']} MiB volume snapshots")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the big volume")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    host = machine()
    result = run(args.mib)
    write_raw(args.out, "snapshot_bench", result, host=host, compact=True)
    (args.out / "snapshot_bench.md").write_text(markdown(result))
    plot(result, args.out / "snapshot_bench.png")
    Console().print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
