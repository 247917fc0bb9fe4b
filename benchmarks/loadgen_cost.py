"""The load generator's own Python per reply, in-process, by the path a read takes.

In the bench the load generator shares the 2 cores with the servers, so its CPU per
request caps every partitioned row (benchmarks/README.md, "Partitioned against locked").
Over sockets that figure is mostly system calls and moves with the machine's load; this
script measures the Python alone: a real
:class:`~kernelfarm.bench.loadclient.LoadConnection` is fed reads of replies, its
transport a stub that drops the requests it sends, and only this process's CPU over the
reads is counted.

    in-order   fs-stat's pattern: 16 replies a read, in request order, each read compared
               with the expected byte stream at once
    reordered  net-echo's: the sends' replies in order, the recvs' in shuffled groups of
               random size (as waiting net.recvs answer), each read parsed reply by reply

The reads are made once, by a simulated server answering what the connection sent (a
fixed seed), then replayed into fresh connections, which send the same requests since
they see the same replies: every checkout (``PYTHONPATH``) and every repeat gets the same
reads.  ``--against MODULE`` replays them into that module's ``LoadConnection`` too,
alternated with this tree's, for a side-by-side figure.

    python benchmarks/loadgen_cost.py [--rounds 20000] [--repeats 3] [--against MODULE]
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

from kernelfarm.bench.histogram import Histogram
from kernelfarm.bench.loadclient import LoadConnection
from kernelfarm.bench.loadgen import ConnectionPlan, Request, encode_plan
from kernelfarm.bench.runner import write_raw
from kernelfarm.bench.workloads import ECHO_PAYLOAD

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PATTERNS = ("in-order", "reordered")
DEPTH = 16
SEED = 1


class Collecting:
    """A transport that keeps what the connection sends (for the simulated server)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def abort(self) -> None:
        pass


class Dropping(Collecting):
    """A transport that sends nothing: the replay measures the connection alone."""

    def write(self, data: bytes) -> None:
        pass


def plan(pattern: str) -> tuple[list[list[bytes]], list[list[bytes | None]]]:
    """The encoded requests and expected replies of each slot."""
    chains: list[list[Request]]
    if pattern == "in-order":
        stat = {"ino": 5, "size": 10, "mtime_ns": 1}
        chains = [[("fs.stat", ["/t/stat.dat"], stat)] for _ in range(DEPTH)]
    else:
        chains = [[("net.send", ["t", slot, ECHO_PAYLOAD], len(ECHO_PAYLOAD)),
                   ("net.recv", ["t", slot, 2 * len(ECHO_PAYLOAD), 5.0], ECHO_PAYLOAD)]
                  for slot in range(DEPTH)]
    _, _, slots, replies = encode_plan(ConnectionPlan(("127.0.0.1", 1), chains))
    return slots, replies


def split(sent: bytes) -> list[bytes]:
    """Encoded requests sent back to back -> each one's bytes."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(sent)
    requests = []
    start = 0
    for _ in unpacker:
        end = unpacker.tell()
        requests.append(sent[start:end])
        start = end
    return requests


def record_reads(pattern: str, rounds: int) -> list[bytes]:
    """What a server answering the connection's requests gives it, read by read: every
    request answered in order (in-order), or the sends at once and the recvs later, in
    shuffled groups of random size (reordered)."""
    slots, replies = plan(pattern)
    reply_to = {request: replies[slot][index] for slot, chain in enumerate(slots)
                for index, request in enumerate(chain)}
    reads: list[bytes] = []

    class Recording(LoadConnection):
        def data_received(self, data: bytes) -> None:
            reads.append(data)
            super().data_received(data)

    connection = Recording(slots, Histogram(), lambda: None, replies)
    transport = Collecting()
    connection.connection_made(transport)  # type: ignore[arg-type]  # a stub
    connection.start()
    chance = random.Random(SEED)
    waiting: list[bytes] = []
    for _ in range(rounds):
        at_once: list[bytes] = []
        for request in split(b"".join(transport.sent)):
            reply = reply_to[request]
            assert reply is not None
            later = pattern == "reordered" and b"net.recv" in request
            (waiting if later else at_once).append(reply)
        transport.sent.clear()
        if at_once:
            connection.data_received(b"".join(at_once))
        if waiting:
            chance.shuffle(waiting)
            count = chance.randint(1, len(waiting))
            connection.data_received(b"".join(waiting[:count]))
            del waiting[:count]
    if connection.errors or connection.protocol_errors:
        raise RuntimeError(f"the simulated server was answered wrongly: {connection.errors}")
    return reads


def replay(connection_class: Any, pattern: str, reads: list[bytes]) -> dict[str, float]:
    """The reads into a fresh connection: µs of process CPU per reply, replies per read."""
    slots, replies = plan(pattern)
    connection = connection_class(slots, Histogram(), lambda: None, replies)
    connection.connection_made(Dropping())
    connection.start()
    started = time.process_time()
    for data in reads:
        connection.data_received(data)
    spent = time.process_time() - started
    if connection.errors or connection.protocol_errors or not connection.ops:
        raise RuntimeError("a replay went otherwise than its recording")
    return {"us_per_reply": spent / connection.ops * 1e6,
            "replies_per_read": connection.ops / connection.reads,
            "compared": connection.by_bytes / connection.ops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--against", help="another LoadConnection's module, e.g. a "
                        "copy of an older loadclient.py on PYTHONPATH")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    trees: dict[str, Any] = {"this tree": LoadConnection}
    if args.against:
        trees[args.against] = importlib.import_module(args.against).LoadConnection
    rows = []
    for pattern in args.patterns.split(","):
        reads = record_reads(pattern, args.rounds)
        for repeat in range(args.repeats):
            for tree, connection_class in trees.items():
                row = {"pattern": pattern, "tree": tree, "repeat": repeat,
                       **replay(connection_class, pattern, reads)}
                rows.append(row)
                print(f"{pattern:9} {tree:12} {row['us_per_reply']:6.3f} µs per reply, "
                      f"{row['replies_per_read']:5.2f} replies per read", flush=True)
    write_raw(args.out, "loadgen_cost", {"rows": rows}, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
