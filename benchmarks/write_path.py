"""A kernel's whole fsync-always write path in-process: ns of CPU per 16-byte write_file.

``peers.py`` measures ``fs.write_file`` over real sockets with the syncer child, where a
write's CPU moves by tens of percent with the machine's load.  This script keeps the
parts that are the kernel's own work and drops only the sockets: ``--connections``
connections each hand ``--depth`` pre-encoded ``fs.write_file`` requests (each slot its
own file, as peers.py's load) to ``data_received`` of the kernel's
:class:`~kernelfarm.rpc.server.ServerConnection`; then the turn's group commit runs
(journal write, descriptors handed to a real syncer child, ``fsync = "always"``); then,
once the child has answered, the replies go to transports that count bytes.  Timed with
the loop's thread CPU time, per stage:

- ``requests``: decoding, routing, the handler (tree, journal record), reply encoding;
- ``commit``: the turn's journal write (one frame per group) and the syncer hand-off;
- ``answer``: reading the syncer's answer and writing the held replies;
- ``syncer``: the child's CPU (its ``fdatasync`` calls), per write.

Rounds of ``--turns`` turns, best of rounds (least disturbed by the rest of the machine).

    python benchmarks/write_path.py [--turns 200] [--rounds 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import psutil
import uvloop

from kernelfarm.bench.runner import write_raw
from kernelfarm.boot import BootInfo
from kernelfarm.config import Config
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.kernel.syncer import Syncer
from kernelfarm.partition import NSLOTS
from kernelfarm.rpc.server import ServerConnection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from request_path import CountingTransport

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAYLOAD = b"0123456789abcdef"
STAGES = ("requests", "commit", "answer")
READS_KEPT = 8
"""Distinct pre-encoded reads per connection (msgids differ between them)."""


def connections(kernel: Kernel, count: int) -> list[ServerConnection]:
    config = kernel.config
    made = []
    for _ in range(count):
        conn = ServerConnection(kernel, max_message_bytes=config.rpc.max_message_bytes,
                                max_inflight=config.rpc.max_inflight,
                                write_buffer_bytes=config.rpc.write_buffer_bytes,
                                meter=kernel.meter)
        conn.connection_made(CountingTransport())  # type: ignore[arg-type]
        conn.session = kernel.gate.trusted
        made.append(conn)
    return made


def one_round(kernel: Kernel, syncer: Syncer, conns: list[ServerConnection],
              reads: list[list[bytes]], turns: int, depth: int) -> dict[str, float]:
    """ns of CPU per write of each stage over ``turns`` turns, and the syncer's."""
    commits = kernel.group_commit
    child = psutil.Process(syncer.pid)
    spent = dict.fromkeys(STAGES, 0)
    child_before = sum(child.cpu_times()[:2])
    for turn in range(turns):
        batch = reads[turn % READS_KEPT]
        started = time.thread_time_ns()
        for conn, data in zip(conns, batch, strict=True):
            conn.data_received(data)
        handled = time.thread_time_ns()
        commits.commit()
        committed = time.thread_time_ns()
        syncer.wait()  # blocked in select meanwhile: no CPU time of this thread
        answered = time.thread_time_ns()
        spent["requests"] += handled - started
        spent["commit"] += committed - handled
        spent["answer"] += answered - committed
    writes = turns * len(conns) * depth
    result = {stage: spent[stage] / writes for stage in STAGES}
    result["syncer"] = (sum(child.cpu_times()[:2]) - child_before) * 1e9 / writes
    result["loop"] = sum(result[stage] for stage in STAGES)
    return result


async def measure(args: argparse.Namespace, syncer: Syncer, where: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    config = Config.from_dict({"fs": {"fsync": "always"}})
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                    addrs={0: ["127.0.0.1", 1]}, config={}, data_dir=str(where),
                    supervisor_pid=0)
    kernel = Kernel(boot, config, loop)
    try:
        kernel.load_slots(list(range(NSLOTS)))
        kernel.group_commit.sync_behind(syncer, loop)
        conns = connections(kernel, args.connections)
        kernel.handle(conns[0], 0, "fs.mkdir", ["/w"])
        reads = [[b"".join(msgpack.packb([0, (n * args.depth + s) % 2**32, "fs.write_file",
                                         [f"/w/f{c}-{s}", PAYLOAD]])
                           for s in range(args.depth))
                  for c in range(args.connections)] for n in range(READS_KEPT)]
        one_round(kernel, syncer, conns, reads, READS_KEPT, args.depth)  # files made
        rounds = [one_round(kernel, syncer, conns, reads, args.turns, args.depth)
                  for _ in range(args.rounds)]
    finally:
        kernel.close()  # and the syncer
    best = min(rounds, key=lambda r: r["loop"])
    return {"best": best, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=16, help="requests per read")
    parser.add_argument("--turns", type=int, default=200, help="loop turns per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the best is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    syncer = Syncer.fork()  # before the loop exists, as a kernel does at boot
    with tempfile.TemporaryDirectory(prefix="kernelfarm-write-path-") as where:
        result = uvloop.run(measure(args, syncer, Path(where)))
    best = result["best"]
    print(f"16-byte fs.write_file, fsync always, {args.connections} x {args.depth} per turn, "
          f"best of {args.rounds} rounds: ns of CPU per write")
    for stage in (*STAGES, "loop", "syncer"):
        print(f"  {stage:10s} {best[stage]:8,.0f}")
    print("loop per round: " + ", ".join(f"{r['loop']:,.0f}" for r in result["rounds"]))
    write_raw(args.out, "write_path", result, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
