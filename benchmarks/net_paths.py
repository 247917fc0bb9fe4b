"""The kernel's own CPU per net-echo round trip, in-process, by the path a ``recv`` takes.

``net_floor.py`` measures a kernel process under real load, where which path a
``net.recv`` takes (answered from what a readiness read ahead, or waiting for the echo)
depends on timing, and a busy machine moves the figure by several microseconds.  This
script fixes the path and counts only this thread's CPU: a real :class:`Kernel` and real
:class:`ServerConnection` objects (their transport a stub that drops replies, so no RPC
system calls), ``--connections`` x ``--depth`` net sockets whose host ends are socketpairs,
requests fed to ``data_received`` as the wire would (one batch per connection):

    echo-first  net.send, the echo comes back, then net.recv: the readiness reads ahead,
                the recv is answered from it (a quiet machine, mostly)
    recv-first  net.send and net.recv together, then the echo: every recv waits and the
                readiness answers it (a busy machine, mostly)
    mixed       each round, each connection's recvs come first with ``--waiting-share``
                odds, the others' after the echo: both paths, and the changes between
                them, on the same socket

The echo (the socketpairs' far ends) runs in this thread too; its time is measured and
taken out.  Compare figures of one run, or of runs side by side (``PYTHONPATH`` at two
checkouts): absolute values drift by a microsecond between runs on a shared machine.

``--host stub`` takes the host out as well: each socket's host end is a stub whose
``send`` and ``recv`` are C calls that take everything and give the echo at once, and
the readiness is the socket's own callback called in turn, not an epoll event.  What is
left is the kernel's Python work per round trip alone (the socket system calls are the
floor's, ``net_floor.py``), steady to a few percent even on a busy machine: the figure
to compare a change of the net path by.  (``mixed`` needs real sockets.)

    python benchmarks/net_paths.py [--rounds 300] [--repeats 3] [--waiting-share 0.5]
                                   [--paths echo-first,recv-first,mixed]
                                   [--host socketpair|stub] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import uvloop

from kernelfarm.bench.runner import write_raw
from kernelfarm.boot import BootInfo
from kernelfarm.config import Config
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.net.sockets import FarmSocket
from kernelfarm.net.subsystem import NetSubsystem
from kernelfarm.partition import NSLOTS
from kernelfarm.rpc.server import ServerConnection

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAMESPACE = "bench"
PAYLOAD = b"x" * 64
WARMUP_ROUNDS = 20
SETTLE_S = 5.0
PATHS = ("echo-first", "recv-first", "mixed")
TURNS_FOR_READINESS = 3
"""Loop turns a mixed round gives the echoes' readiness before the late recvs come."""


class DroppingTransport:
    """A transport that takes every reply and sends nothing: no RPC system calls."""

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 0) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


class StubSocket:
    """A host socket that costs no system call: ``send`` takes everything and ``recv``
    returns the echo, both C functions (``len``, a dict's ``get``), so the time measured
    is the kernel's own."""

    __slots__ = ("send", "recv")

    def __init__(self) -> None:
        self.send = len
        self.recv = dict.fromkeys((2 * len(PAYLOAD), 65536), PAYLOAD).get

    def close(self) -> None:
        pass


class Bench:
    """A kernel, its connections and sockets, and the pre-encoded request batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop, data_dir: str, connections: int,
                 depth: int, stub: bool = False) -> None:
        self.stub = stub
        boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                        addrs={0: ["127.0.0.1", 1]}, config={}, data_dir=data_dir,
                        supervisor_pid=0)
        self.kernel = Kernel(boot, Config.from_dict({"fs": {"fsync": "never"}}), loop)
        self.kernel.load_slots(list(range(NSLOTS)))
        net = next(s for s in self.kernel.subsystems if isinstance(s, NetSubsystem))
        self.conns: list[ServerConnection] = []
        self.sends: list[bytes] = []
        self.recvs: list[bytes] = []
        self.sockets: list[FarmSocket] = []
        self.peers: list[socket.socket] = []
        for _ in range(connections):
            conn = ServerConnection(self.kernel, max_message_bytes=1 << 20,
                                    max_inflight=4 * depth, write_buffer_bytes=1 << 22)
            conn.connection_made(DroppingTransport())  # type: ignore[arg-type]  # a stub
            conn.session = self.kernel.gate.trusted
            sends, recvs = [], []
            for index in range(depth):
                reply = self.kernel.handle(conn, 0, "net.socket", [NAMESPACE, "tcp"])
                assert reply is not None and reply[2] is None, reply
                sid = reply[3]
                farm_sock = net.namespaces[NAMESPACE].sockets[sid]
                if stub:
                    farm_sock.sock = StubSocket()  # type: ignore[assignment]  # a stub
                    farm_sock._readable.watched = True  # its readiness: ready() calls it
                else:
                    ours, peer = socket.socketpair()
                    ours.setblocking(False)
                    peer.setblocking(False)
                    farm_sock.sock = ours
                    self.peers.append(peer)
                self.sockets.append(farm_sock)
                sends.append(msgpack.packb([0, 2 * index, "net.send",
                                            [NAMESPACE, sid, PAYLOAD]]))
                recvs.append(msgpack.packb([0, 2 * index + 1, "net.recv",
                                            [NAMESPACE, sid, 2 * len(PAYLOAD), 5.0]]))
            self.conns.append(conn)
            self.sends.append(b"".join(sends))
            self.recvs.append(b"".join(recvs))

    def echo(self) -> float:
        """Echo what each far end got; the thread CPU it took (not the kernel's).  With
        stub hosts the echo is there at once: each socket's readiness runs instead, in
        the kernel's time, as the loop would run it."""
        if self.stub:
            for farm_sock in self.sockets:
                farm_sock._wake(farm_sock._readable)
            return 0.0
        started = time.thread_time()
        for peer in self.peers:
            peer.send(peer.recv(1024))
        return time.thread_time() - started

    def feed(self, batches: list[bytes], which: list[bool] | None = None) -> None:
        """Each connection's batch (only those ``which`` says, if given)."""
        for index, (conn, batch) in enumerate(zip(self.conns, batches, strict=True)):
            if which is None or which[index]:
                conn.data_received(batch)

    def waited(self) -> bool:
        return not any(c.inflight for c in self.conns)

    def answered(self) -> bool:
        """Every call answered, and nothing read ahead left untaken."""
        return not any(c.inflight for c in self.conns) and \
            all(s.pending is None for s in self.sockets)

    def read_ahead(self) -> bool:
        """Every echo read ahead by its socket's readiness."""
        return all(s.pending is not None for s in self.sockets)

    async def until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + SETTLE_S
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("round trips did not finish")
            await asyncio.sleep(0)

    async def round(self, path: str, waiting_share: float = 0.0) -> float:
        """One round trip on every socket; the kernel's thread CPU for it."""
        started = time.thread_time()
        self.feed(self.sends)
        if path == "recv-first":
            self.feed(self.recvs)
            echo = self.echo()
        elif path == "mixed":
            first = [random.random() < waiting_share for _ in self.conns]
            self.feed(self.recvs, first)
            echo = self.echo()
            await self.until(self.waited)
            for _ in range(TURNS_FOR_READINESS):
                await asyncio.sleep(0)
            self.feed(self.recvs, [not early for early in first])
        else:
            echo = self.echo()
            await self.until(self.read_ahead)
            self.feed(self.recvs)
        await self.until(self.answered)
        return time.thread_time() - started - echo

    def close(self) -> None:
        if self.stub:
            for farm_sock in self.sockets:
                farm_sock._readable.watched = False  # the loop never watched a stub
        self.kernel.close()
        for peer in self.peers:
            peer.close()


async def measure(path: str, rounds: int, connections: int, depth: int,
                  waiting_share: float, stub: bool = False) -> float:
    """µs of kernel CPU per round trip on ``path``."""
    with tempfile.TemporaryDirectory(prefix="kernelfarm-netpaths-") as where:
        bench = Bench(asyncio.get_running_loop(), where, connections, depth, stub)
        try:
            await bench.round("recv-first")  # one wait: the readable watches stay on
            for _ in range(WARMUP_ROUNDS):
                await bench.round(path, waiting_share)
            spent = sum([await bench.round(path, waiting_share) for _ in range(rounds)])
            if not stub and any(s.bytes_in != s.bytes_out for s in bench.sockets):
                raise RuntimeError("an echo was lost")
        finally:
            bench.close()
    return spent / (rounds * connections * depth) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--waiting-share", type=float, default=0.5,
                        help="mixed: the odds that a connection's recvs come first")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--host", choices=("socketpair", "stub"), default="socketpair",
                        help="stub: no socket system calls, the kernel's Python work alone")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    stub = args.host == "stub"
    if stub and "mixed" in args.paths.split(","):
        parser.error("--host stub takes echo-first and recv-first (mixed needs real sockets)")
    rows = []
    for repeat in range(args.repeats):
        for path in args.paths.split(","):
            us = uvloop.run(measure(path, args.rounds, args.connections, args.depth,
                                    args.waiting_share, stub))
            rows.append({"repeat": repeat, "path": path, "cpu_us": us})
            print(f"{repeat} {path:10} {us:6.2f} µs of kernel CPU per round trip", flush=True)
    write_raw(args.out, "net_paths", {"rows": rows}, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
