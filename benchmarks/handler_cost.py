"""What the lock wrapper alone costs per request, in ns, with no RPC and no threads.

The locked baseline differs from a unicpu kernel by one thing on the request path: its
handlers are wrapped by :class:`~kernelfarm.kernel.locks.LockProvider` when they are
registered.  This script builds real kernels in this process (same subsystems, a scratch
data dir, every slot owned), one without a wrapper and one per locking mode, and times
:meth:`Kernel.handle` on the same requests, rounds interleaved so drift hits every
variant alike.  The difference to the unwrapped kernel is the wrapper and its lock, per
request, measured on its own.  Replies are not packed or sent; group commits run once
per batch of ``--depth`` requests (a loop turn), as in a kernel.  Times are this thread's
CPU time (``thread_time_ns``), so other work on a shared machine does not count.

``net.send`` sends 64 bytes on a namespace's socket whose host end is one side of a
socketpair (the other side is drained between batches, untimed); the same ``sock.send``
alone is timed for scale, so the difference is the kernel's own work per send.

    python benchmarks/handler_cost.py [--requests 200000] [--rounds 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table

from kernelfarm.bench.runner import write_raw
from kernelfarm.boot import BootInfo
from kernelfarm.config import Config
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.kernel.locks import LockProvider
from kernelfarm.net.subsystem import NetSubsystem
from kernelfarm.partition import NSLOTS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = ("none", "global", "fine")
VOLUME = "cost"
NAMESPACE = "cost"
BLOCK = bytes(range(256)) * 16
PAYLOAD = b"kernelfarm-bench" * 4
"""64 bytes, as the bench's net-echo sends."""
REQUESTS: dict[str, Callable[[int, int], list[Any]]] = {
    "fs.stat": lambda i, sid: [f"/{VOLUME}/stat.dat"],
    "fs.write_file": lambda i, sid: [f"/{VOLUME}/w{i % 256}", b"0123456789abcdef"],
    "fs.pread": lambda i, sid: [f"/{VOLUME}/data.4k", 0, len(BLOCK)],
    "net.send": lambda i, sid: [NAMESPACE, sid, PAYLOAD],
}


class NoConnection:
    """The connection a request came in on: trusted (no ``auth.hello``, as the
    supervisor's channel), and never written to by these requests."""

    inflight = 0

    def __init__(self, kernel: Kernel) -> None:
        self.session = kernel.gate.trusted

    def write(self, data: bytes) -> None:
        pass

    def on_close(self, callback: Callable[[], None]) -> None:
        pass  # the socket it opens is closed with its kernel


class Subject:
    """One kernel under test with its fs volume, and a net socket whose host end is
    one side of a socketpair (``peer`` is the other, drained between batches)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.conn = NoConnection(kernel)
        handle, conn = kernel.handle, self.conn
        handle(conn, 0, "fs.mkdir", [f"/{VOLUME}"])
        handle(conn, 0, "fs.write_file", [f"/{VOLUME}/stat.dat", b"x"])
        handle(conn, 0, "fs.write_file", [f"/{VOLUME}/data.4k", BLOCK])
        reply = handle(conn, 0, "net.socket", [NAMESPACE, "tcp"])
        assert reply is not None and reply[2] is None, reply
        self.sid: int = reply[3]
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.setblocking(False)
        net = next(s for s in kernel.subsystems if isinstance(s, NetSubsystem))
        net.namespaces[NAMESPACE].sockets[self.sid].sock = ours

    def drain(self) -> None:
        drain(self.peer)

    def close(self) -> None:
        self.kernel.close()
        self.peer.close()


def drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(1 << 20)
        except BlockingIOError:
            return


def make_kernel(variant: str, data_dir: Path, loop: asyncio.AbstractEventLoop) -> Kernel:
    config = Config.from_dict({"fs": {"fsync": "never"}})
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                    addrs={0: ["127.0.0.1", 1]}, config={}, data_dir=str(data_dir),
                    supervisor_pid=0)
    wrap = None if variant == "none" else LockProvider(variant).wrap
    kernel = Kernel(boot, config, loop, wrap=wrap)
    kernel.load_slots(list(range(NSLOTS)))
    return kernel


async def time_requests(subject: Subject, method: str, count: int, depth: int) -> float:
    """ns per :meth:`Kernel.handle` of ``count`` requests, a commit every ``depth``."""
    conn, handle = subject.conn, subject.kernel.handle
    make = REQUESTS[method]
    params = [make(i, subject.sid) for i in range(count)]
    elapsed = 0
    for first in range(0, count, depth):
        batch = params[first:first + depth]
        started = time.thread_time_ns()
        for msgid, request in enumerate(batch):
            reply = handle(conn, msgid, method, request)
            if reply is None or reply[2] is not None:
                raise RuntimeError(f"{method} failed: {reply}")
        elapsed += time.thread_time_ns() - started
        subject.drain()
        await asyncio.sleep(0)  # the loop turn: the group commit runs here, untimed
    return elapsed / count


def bare_send_ns(count: int, depth: int) -> float:
    """The host call alone: ``sock.send`` of the same 64 bytes on a socketpair."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    elapsed = 0
    with ours, peer:
        for _ in range(0, count, depth):
            started = time.thread_time_ns()
            for _ in range(depth):
                ours.send(PAYLOAD)
            elapsed += time.thread_time_ns() - started
            drain(peer)
    return elapsed / (count // depth * depth)


def bare_lock_ns(count: int = 1_000_000) -> float:
    """``with lock:`` around nothing, for scale."""
    lock = threading.Lock()
    started = time.thread_time_ns()
    for _ in range(count):
        with lock:
            pass
    return (time.thread_time_ns() - started) / count


async def measure(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    subjects = {variant: Subject(make_kernel(variant, scratch / variant, loop))
                for variant in VARIANTS}
    await asyncio.sleep(0)
    samples: dict[str, dict[str, list[float]]] = {
        m: {v: [] for v in VARIANTS} for m in REQUESTS}
    sends = []
    for _ in range(args.rounds):
        for method in REQUESTS:
            for variant in VARIANTS:
                samples[method][variant].append(await time_requests(
                    subjects[variant], method, args.requests, args.depth))
        sends.append(bare_send_ns(args.requests, args.depth))
    for subject in subjects.values():
        subject.close()
    best = {m: {v: min(s) for v, s in by.items()} for m, by in samples.items()}
    return {"ns_per_request": best, "samples": samples,
            "wrapper_ns": {m: {v: best[m][v] - best[m]["none"] for v in VARIANTS[1:]}
                           for m in REQUESTS},
            "bare_with_lock_ns": bare_lock_ns(), "bare_send_ns": min(sends)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000, help="per sample")
    parser.add_argument("--rounds", type=int, default=5, help="samples per cell (min kept)")
    parser.add_argument("--depth", type=int, default=16, help="requests per loop turn")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kernelfarm-cost-") as where:
        result = uvloop.run(measure(args, Path(where)))
    table = Table(title="Kernel.handle, ns per request (best of rounds), no RPC")
    for column in ("request", "no wrapper", "global", "fine", "global wrapper",
                   "fine wrapper"):
        table.add_column(column, justify="left" if column == "request" else "right")
    for method, by in result["ns_per_request"].items():
        extra = result["wrapper_ns"][method]
        table.add_row(method, *(f"{by[v]:,.0f}" for v in VARIANTS),
                      f"+{extra['global']:,.0f} ({extra['global'] / by['none']:.0%})",
                      f"+{extra['fine']:,.0f} ({extra['fine'] / by['none']:.0%})")
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(f"for scale: `with threading.Lock(): pass` = "
                  f"{result['bare_with_lock_ns']:.0f} ns; `sock.send` of net.send's 64 "
                  f"bytes on a socketpair = {result['bare_send_ns']:.0f} ns")
    write_raw(args.out, "handler_cost", result, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
