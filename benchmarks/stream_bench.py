"""A file streamed through one kernel with the asyncio client alone (no FUSE): MB/s and CPU.

What ``kernelfarm mount``'s seq-write and seq-read rows are bound by (issue 12): the
mount sends a program's stream as 1 MiB ``fs.pwrite`` calls, many in flight, and reads
ahead with 1 MiB ``fs.pread`` calls.  This script does the same with no FUSE in between:

- pwrite: ``--size-mib`` MiB written to a new file as 1 MiB ``fs.pwrite`` calls at
  growing offsets, ``--inflight`` calls in flight (one pipelined connection), then one
  ``fs.fsync`` (so every policy ends with the data durable);
- pread: the same file read back in 1 MiB ``fs.pread`` calls, as many in flight.

A farm of one kernel on a fresh data dir per fsync policy, ``max_file_bytes`` and the
quota raised to fit the file and ``snapshot_journal_bytes`` past the run's writes (a
snapshot rewrites the volume: restart time, not throughput).  The kernel's CPU time (user
+ system, psutil; its syncer child's apart, after the table) over each phase is divided
by the MiB moved: on a busy machine CPU per MiB is steadier than MB/s; so is this
script's own (the client's), which shows which side bounds the MB/s.  Best of
``--repeat`` rounds (each a new file), and each round's figures after the table (a
kernel's first stream takes memory it never touched, which on a VM can cost more than
everything else: benchmarks/README.md, "The write path, sixth pass").

    python benchmarks/stream_bench.py [--size-mib 256] [--inflight 16] [--repeat 3]
                                      [--fsync never,always] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psutil
import uvloop
from rich.console import Console
from rich.table import Table

import kernelfarm.aio
from kernelfarm.auth.tokens import admin_token_of
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import file_farm

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Farm:
    control: tuple[str, int]
    token: str
    kernel: psutil.Process
    syncer: psutil.Process
    """The kernel's syncer child: its fdatasyncs, and the writeback of the journal's
    page-cache drops (reported apart from the kernel's own, the loop's, CPU)."""

    def client(self) -> kernelfarm.aio.Client:
        return kernelfarm.aio.Client(self.control, token=self.token)


@contextlib.contextmanager
def farm(scratch: Path, fsync: str, size: int) -> Iterator[Farm]:
    """A one-kernel farm on a fresh data dir."""
    with file_farm(scratch, fsync, size, kernels=1) as served:
        (kernel,) = psutil.Process(served.pid).children()
        (syncer,) = (child for child in kernel.children() if child.name() == "kf-syncer")
        yield Farm(served.control, admin_token_of(served.data_dir), kernel, syncer)


async def pipelined(calls: Iterator[Any], inflight: int) -> None:
    """Await every call of ``calls`` with at most ``inflight`` in flight."""
    running: set[asyncio.Future[Any]] = set()
    for call in calls:
        running.add(asyncio.ensure_future(call))
        if len(running) >= inflight:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()
    for future in running:
        await future


async def one_round(target: Farm, path: str, size: int, inflight: int) -> dict[str, float]:
    chunk = os.urandom(MIB)
    count = size // MIB
    kernel, syncer, me = target.kernel, target.syncer, psutil.Process()
    async with target.client() as client:
        await client.fs.write_file(path, b"")
        cpu, mine, started = kernel.cpu_times(), me.cpu_times(), time.perf_counter()
        behind = syncer.cpu_times()
        await pipelined((client.fs.pwrite(path, n * MIB, chunk) for n in range(count)),
                        inflight)
        await client.fs.fsync(path)
        write_s, write_cpu = time.perf_counter() - started, cpu_since(kernel, cpu)
        write_client, write_syncer = cpu_since(me, mine), cpu_since(syncer, behind)
        cpu, mine, started = kernel.cpu_times(), me.cpu_times(), time.perf_counter()
        sizes: list[int] = []

        async def read(offset: int) -> None:
            sizes.append(len(await client.fs.pread(path, offset, MIB)))

        await pipelined((read(n * MIB) for n in range(count)), inflight)
        read_s, read_cpu = time.perf_counter() - started, cpu_since(kernel, cpu)
        read_client = cpu_since(me, mine)
        assert sum(sizes) == size, (sum(sizes), size)
        await client.fs.unlink(path)
    mib = size / MIB
    return {"pwrite_mb_s": mib / write_s, "pwrite_cpu_ms_per_mib": write_cpu * 1000 / mib,
            "pwrite_client_cpu_ms_per_mib": write_client * 1000 / mib,
            "pwrite_syncer_cpu_ms_per_mib": write_syncer * 1000 / mib,
            "pread_mb_s": mib / read_s, "pread_cpu_ms_per_mib": read_cpu * 1000 / mib,
            "pread_client_cpu_ms_per_mib": read_client * 1000 / mib}


def cpu_since(process: psutil.Process, before: Any) -> float:
    now = process.cpu_times()
    return float(now.user - before.user + now.system - before.system)


def run(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    rounds = []
    with tempfile.TemporaryDirectory(prefix="kernelfarm-stream-") as scratch_dir, \
            farm(Path(scratch_dir), policy, size) as target:

        async def main() -> None:
            async with target.client() as client:
                await client.fs.mkdir("/stream")
            for n in range(args.repeat):
                rounds.append(await one_round(target, f"/stream/f{n}", size, args.inflight))

        uvloop.run(main())
    best = {key: (max if key.endswith("mb_s") else min)(r[key] for r in rounds)
            for key in rounds[0]}
    return {"fsync": policy, "rounds": rounds, "best": best}


def table(results: list[dict[str, Any]]) -> Table:
    out = Table(title="1 MiB fs.pwrite / fs.pread through one kernel (asyncio client)")
    out.add_column("fsync", justify="right")
    for op in ("pwrite", "pread"):
        for column in ("MB/s", "kernel CPU ms/MiB", "client CPU ms/MiB"):
            out.add_column(f"{op} {column}", justify="right")
    for result in results:
        best = result["best"]
        cells = [result["fsync"]]
        for op in ("pwrite", "pread"):
            cells += [f"{best[f'{op}_mb_s']:.0f}", f"{best[f'{op}_cpu_ms_per_mib']:.2f}",
                      f"{best[f'{op}_client_cpu_ms_per_mib']:.2f}"]
        out.add_row(*cells)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fsync", default="never,always")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    host = machine()
    results = [run(policy, args) for policy in args.fsync.split(",")]
    console = Console()
    console.print(table(results))
    for result in results:  # a first round takes fresh memory: each round says its own
        rounds = result["rounds"]
        for op in ("pwrite", "pread"):
            console.print(
                f"{result['fsync']} {op} by round: MB/s "
                + ", ".join(f"{r[f'{op}_mb_s']:.0f}" for r in rounds) + "; kernel CPU ms/MiB "
                + ", ".join(f"{r[f'{op}_cpu_ms_per_mib']:.2f}" for r in rounds)
                + ("; its syncer's " + ", ".join(
                    f"{r['pwrite_syncer_cpu_ms_per_mib']:.2f}" for r in rounds)
                   if op == "pwrite" else ""))
    write_raw(args.out, "stream_bench",
              {"size_mib": args.size_mib, "inflight": args.inflight, "repeat": args.repeat,
               "results": results}, host=host)


if __name__ == "__main__":
    main()
