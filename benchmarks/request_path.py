"""The server's whole request path in-process, beside the echo floor's: ns of CPU per request.

``peers.py`` compares a kernel with the bare msgpack-rpc echo over real sockets, where
each read and reply write is a system call and the event loop runs between reads; on a
shared machine those move by tens of percent with the load.  This script drops only the
sockets and the loop: the same pre-encoded reads (``--depth`` requests each, as the
``50 x 16`` load delivers them) are handed to ``data_received`` of a kernel's
:class:`~kernelfarm.rpc.server.ServerConnection` and of the echo's protocol, both
writing into a transport that counts bytes.  What is timed is everything Python does per
request: decoding, routing, the handler, encoding and the write call.  Thread CPU time,
rounds interleaved, best of rounds, so it reads the same on a busy machine.

    python benchmarks/request_path.py [--reads 20000] [--depth 16] [--rounds 7] [--out DIR]
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
import uvloop
from rich.console import Console
from rich.table import Table

from kernelfarm.bench.echo import MsgpackEchoProtocol
from kernelfarm.bench.runner import write_raw
from kernelfarm.rpc.server import ServerConnection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from handler_cost import make_kernel

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VOLUME = "path"
STAT_PATH = f"/{VOLUME}/stat.dat"
REQUESTS: dict[str, list[Any]] = {
    "fs.stat": [STAT_PATH],
    "fs.write_file": [f"/{VOLUME}/w.dat", b"0123456789abcdef"],
}
"""Method -> params; a write_file overwrites one file (fsync never: no journal flush)."""


class CountingTransport:
    """The transport a connection writes to: counts what it is given, sends nothing."""

    def __init__(self) -> None:
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 0) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def reads(method: str, count: int, depth: int) -> list[bytes]:
    """``count`` reads of ``depth`` requests each, msgids running on as a client's do."""
    params = REQUESTS[method]
    return [b"".join(msgpack.packb([0, (n * depth + i) % 2**32, method, params])
                     for i in range(depth)) for n in range(count)]


def ns_per_request(protocol: Any, data: list[bytes], depth: int) -> float:
    received = protocol.data_received
    started = time.thread_time_ns()
    for chunk in data:
        received(chunk)
    return (time.thread_time_ns() - started) / (len(data) * depth)


async def measure(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    kernel = make_kernel("none", scratch / "kernel", loop)
    try:
        conn = ServerConnection(kernel, max_message_bytes=kernel.config.rpc.max_message_bytes,
                                max_inflight=kernel.config.rpc.max_inflight,
                                write_buffer_bytes=kernel.config.rpc.write_buffer_bytes,
                                meter=kernel.meter, tuples=True)  # as a kernel's listener
        conn.connection_made(CountingTransport())  # type: ignore[arg-type]
        conn.session = kernel.gate.trusted
        kernel.handle(conn, 0, "fs.mkdir", [f"/{VOLUME}"])
        kernel.handle(conn, 0, "fs.write_file", [STAT_PATH, b"kernelfarm"])
        echo = MsgpackEchoProtocol()
        echo.connection_made(CountingTransport())  # type: ignore[arg-type]
        samples: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for method in REQUESTS:
                data = reads(method, args.reads, args.depth)
                samples.setdefault(method, []).append(ns_per_request(conn, data, args.depth))
                await asyncio.sleep(0)  # the loop turn: a write's group commit runs here
            data = reads("fs.stat", args.reads, args.depth)
            samples.setdefault("echo", []).append(ns_per_request(echo, data, args.depth))
    finally:
        kernel.close()
    best = {name: min(values) for name, values in samples.items()}
    return {"ns_per_request": best, "samples": samples,
            "stat_over_echo": best["fs.stat"] / best["echo"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=20_000, help="reads per sample")
    parser.add_argument("--depth", type=int, default=16, help="requests per read")
    parser.add_argument("--rounds", type=int, default=7, help="samples per row (min kept)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kernelfarm-path-") as where:
        result = uvloop.run(measure(args, Path(where)))
    table = Table(title=f"whole request path in-process, {args.depth} requests per read")
    table.add_column("server, request")
    table.add_column("ns of CPU per request", justify="right")
    table.add_row("echo, fs.stat (the floor)", f"{result['ns_per_request']['echo']:,.0f}")
    for method in REQUESTS:
        table.add_row(f"kernel, {method}", f"{result['ns_per_request'][method]:,.0f}")
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(f"kernel fs.stat / echo: {result['stat_over_echo']:.2f}")
    write_raw(args.out, "request_path", result, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
