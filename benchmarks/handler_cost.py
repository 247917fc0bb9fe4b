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

    python benchmarks/handler_cost.py [--requests 200000] [--rounds 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from kernelfarm.bench.runner import machine
from kernelfarm.boot import BootInfo
from kernelfarm.config import Config
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.kernel.locks import LockProvider
from kernelfarm.partition import NSLOTS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = ("none", "global", "fine")
VOLUME = "cost"
BLOCK = bytes(range(256)) * 16
REQUESTS: dict[str, Callable[[int], list[Any]]] = {
    "fs.stat": lambda i: [f"/{VOLUME}/stat.dat"],
    "fs.write_file": lambda i: [f"/{VOLUME}/w{i % 256}", b"0123456789abcdef"],
    "fs.pread": lambda i: [f"/{VOLUME}/data.4k", 0, len(BLOCK)],
}


class NoConnection:
    """The connection a request came in on: trusted (no ``auth.hello``, as the
    supervisor's channel), and never written to by these requests."""

    inflight = 0

    def __init__(self, kernel: Kernel) -> None:
        self.session = kernel.gate.trusted

    def write(self, data: bytes) -> None:
        pass


def make_kernel(variant: str, data_dir: Path, loop: asyncio.AbstractEventLoop) -> Kernel:
    config = Config.from_dict({"fs": {"fsync": "never"}})
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                    addrs={0: ["127.0.0.1", 1]}, config={}, data_dir=str(data_dir),
                    supervisor_pid=0)
    wrap = None if variant == "none" else LockProvider(variant).wrap
    kernel = Kernel(boot, config, loop, wrap=wrap)
    kernel.load_slots(list(range(NSLOTS)))
    return kernel


async def time_requests(kernel: Kernel, method: str, count: int, depth: int) -> float:
    """ns per :meth:`Kernel.handle` of ``count`` requests, a commit every ``depth``."""
    conn = NoConnection(kernel)
    handle = kernel.handle
    make = REQUESTS[method]
    params = [make(i) for i in range(count)]
    elapsed = 0
    for first in range(0, count, depth):
        batch = params[first:first + depth]
        started = time.thread_time_ns()
        for msgid, request in enumerate(batch):
            reply = handle(conn, msgid, method, request)
            if reply is None or reply[2] is not None:
                raise RuntimeError(f"{method} failed: {reply}")
        elapsed += time.thread_time_ns() - started
        await asyncio.sleep(0)  # the loop turn: the group commit runs here, untimed
    return elapsed / count


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
    kernels = {}
    for variant in VARIANTS:
        kernel = make_kernel(variant, scratch / variant, loop)
        conn = NoConnection(kernel)
        kernel.handle(conn, 0, "fs.mkdir", [f"/{VOLUME}"])
        kernel.handle(conn, 0, "fs.write_file", [f"/{VOLUME}/stat.dat", b"x"])
        kernel.handle(conn, 0, "fs.write_file", [f"/{VOLUME}/data.4k", BLOCK])
        kernels[variant] = kernel
    await asyncio.sleep(0)
    samples: dict[str, dict[str, list[float]]] = {
        m: {v: [] for v in VARIANTS} for m in REQUESTS}
    for _ in range(args.rounds):
        for method in REQUESTS:
            for variant in VARIANTS:
                samples[method][variant].append(await time_requests(
                    kernels[variant], method, args.requests, args.depth))
    for kernel in kernels.values():
        kernel.close()
    best = {m: {v: min(s) for v, s in by.items()} for m, by in samples.items()}
    return {"ns_per_request": best, "samples": samples,
            "wrapper_ns": {m: {v: best[m][v] - best[m]["none"] for v in VARIANTS[1:]}
                           for m in REQUESTS},
            "bare_with_lock_ns": bare_lock_ns()}


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
                  f"{result['bare_with_lock_ns']:.0f} ns")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "handler_cost.json"
    path.write_text(json.dumps({"benchmark": "handler_cost", "machine": machine(),
                                "options": {k: v for k, v in vars(args).items() if k != "out"},
                                **result}, indent=2) + "\n")
    console.print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
