"""The floor of a net-echo round trip: what a plain Python process pays for send + recv.

A kernel's ``net.send`` + ``net.recv`` round trip makes two host socket calls, and on
loopback the ``send`` also runs the peer's TCP receive path on the sender's core (system
time).  This script measures that floor on this machine, side by side in one run with the
kernel (issue 14's goal is <= 8 us of kernel CPU per round trip):

    floor-sock      plain uvloop, ``add_reader`` per socket; readiness -> ``sock.recv`` then
                    ``sock.send`` of the next 64 bytes: the kernel's two system calls and
                    nothing else (no RPC, no namespaces)
    floor-transport uvloop's C transports (``Protocol.data_received`` -> ``write``): the
                    same system calls driven from C, the least Python can pay
    floor-rpc       the design's floor: the load generator's ``net.send`` + ``net.recv``
                    over msgpack-rpc to a plain uvloop server that does only what the
                    design must (decode, find the socket, the host call, reply; a
                    readiness reads ahead or answers the waiting recv; one write per read
                    and per loop turn), with no namespaces, tenants, bounds or accounting
    kernel          one kernel (``serve --kernels 1``), the load generator's net-echo
                    (``net.send`` + ``net.recv``, :mod:`benchmarks.peers`'s shape); its row
                    says which modules it ran compiled (``KERNELFARM_ACCEL=1`` with
                    ``.accel`` first on ``PYTHONPATH``, as ``./kf`` sets them), none if pure

Every row has the same number of sockets open to the same host byte echo, one round trip
in flight each; the server (floor process or kernel) is pinned to ``--server-core``, the
echo peer and the load to ``--load-core``.  CPU per round trip is user and system time of
the server process over the window (``getrusage`` in the socket floors, psutil for
``floor-rpc`` and the kernel, whose load comes from the load generator).

    python benchmarks/net_floor.py [--duration 3] [--rounds 2] [--sockets 800] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import msgpack
import psutil
import uvloop
from rich.console import Console
from rich.table import Table

from kernelfarm.bench.echo import running_echo
from kernelfarm.bench.loadgen import run_load
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import running_farm
from kernelfarm.bench.workloads import ECHO_PAYLOAD

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  # the kernel row is peers.py's net-echo, shape and all

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FLOORS = ("floor-sock", "floor-transport")
"""The floors a child process drives itself (no RPC)."""
FLOOR_RPC = "floor-rpc"
RPC_NAMESPACE = "floor"
CHILD_TIMEOUT_S = 120.0


# -- the floor process ----------------------------------------------------------------------

class Counter:
    def __init__(self) -> None:
        self.round_trips = 0


def _sock_floor(loop: asyncio.AbstractEventLoop, socks: list[socket.socket],
                counter: Counter) -> None:
    """Readiness -> recv -> send, per socket: the kernel's two calls, nothing else."""
    payload = ECHO_PAYLOAD
    size = 2 * len(payload)

    def ready(sock: socket.socket) -> None:
        try:
            sock.recv(size)
        except BlockingIOError:
            return
        counter.round_trips += 1
        sock.send(payload)

    for sock in socks:
        loop.add_reader(sock.fileno(), ready, sock)
        sock.send(payload)


class _EchoClient(asyncio.Protocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.counter.round_trips += 1
        assert self.transport is not None
        self.transport.write(ECHO_PAYLOAD)


async def _floor(kind: str, port: int, sockets: int, warmup: float,
                 duration: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counter = Counter()
    socks = _connected(port, sockets)
    if kind == "floor-sock":
        _sock_floor(loop, socks, counter)
    else:
        for sock in socks:
            _, protocol = await loop.connect_accepted_socket(lambda: _EchoClient(counter),
                                                             sock)
            cast(_EchoClient, protocol).data_received(b"")  # the first request
    await asyncio.sleep(warmup)
    before, start, began = counter.round_trips, resource.getrusage(resource.RUSAGE_SELF), \
        time.perf_counter()
    await asyncio.sleep(duration)
    end, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - began
    trips = counter.round_trips - before
    return {"name": kind, "round_trips": trips, "round_trips_per_s": trips / elapsed,
            "user_us": (end.ru_utime - start.ru_utime) / max(trips, 1) * 1e6,
            "system_us": (end.ru_stime - start.ru_stime) / max(trips, 1) * 1e6}


class _FloorRpc(asyncio.Protocol):
    """One load-generator connection to the design's floor (module docstring): requests
    ``[0, msgid, "net.send"|"net.recv", [ns, sid, ...]]`` on the host sockets ``socks``."""

    def __init__(self, socks: list[socket.socket], pending: dict[int, bytes],
                 waiting: dict[int, tuple[_FloorRpc, int]]) -> None:
        self.socks, self.pending, self.waiting = socks, pending, waiting
        self.unpacker = msgpack.Unpacker()
        self.packer = msgpack.Packer(autoreset=False)
        self.transport: asyncio.Transport | None = None
        self.flush_soon = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        pack = self.packer.pack
        for _, msgid, method, params in self.unpacker:
            sid = params[1]
            if method == "net.send":
                pack([1, msgid, None, self.socks[sid].send(params[2])])
            else:
                echoed = self.pending.pop(sid, None)
                if echoed is None:
                    self.waiting[sid] = (self, msgid)
                else:
                    pack([1, msgid, None, echoed])
        if not self.flush_soon:
            self.flush()

    def answer(self, msgid: int, echoed: bytes) -> None:
        """A waiting recv's reply, written with the others of this loop turn."""
        self.packer.pack([1, msgid, None, echoed])
        if not self.flush_soon:
            self.flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_soon = False
        packer, transport = self.packer, self.transport
        if packer.getbuffer().nbytes and transport is not None \
                and not transport.is_closing():  # the load ends by closing
            transport.write(packer.bytes())
        packer.reset()


async def _floor_rpc(port: int, sockets: int) -> None:
    """Serve the design's floor until killed; print the RPC port first.  One round trip
    in flight per socket, as the load keeps: what a readiness reads waits for one recv."""
    loop = asyncio.get_running_loop()
    socks = _connected(port, sockets)
    pending: dict[int, bytes] = {}
    waiting: dict[int, tuple[_FloorRpc, int]] = {}
    size = 2 * len(ECHO_PAYLOAD)

    def ready(sid: int) -> None:
        try:
            echoed = socks[sid].recv(size)
        except BlockingIOError:
            return
        waiter = waiting.pop(sid, None)
        if waiter is None:
            pending[sid] = echoed
        else:
            waiter[0].answer(waiter[1], echoed)

    for sid, sock in enumerate(socks):
        loop.add_reader(sock.fileno(), ready, sid)
    listener = socket.create_server(("127.0.0.1", 0))
    server = await loop.create_server(lambda: _FloorRpc(socks, pending, waiting),
                                      sock=listener)
    print(listener.getsockname()[1], flush=True)
    await server.serve_forever()


def _connected(port: int, sockets: int) -> list[socket.socket]:
    socks = []
    for _ in range(sockets):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def floor_rpc_row(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """The design's floor, driven by the load generator as the kernel is."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", FLOOR_RPC, "--port", str(port),
         "--sockets", str(args.sockets), "--server-core", str(args.server_core)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        rpc_port = int(child.stdout.readline())
        plans = peers.uniform(("127.0.0.1", rpc_port), args.connections, args.depth,
                              lambda c, s: _floor_chain(c * args.depth + s))
        return loaded_row(FLOOR_RPC, plans, 2, psutil.Process(child.pid), args)
    finally:
        child.kill()
        child.wait(CHILD_TIMEOUT_S)


def _floor_chain(sid: int) -> list[Any]:
    return [("net.send", [RPC_NAMESPACE, sid, ECHO_PAYLOAD], len(ECHO_PAYLOAD)),
            ("net.recv", [RPC_NAMESPACE, sid, 2 * len(ECHO_PAYLOAD), 5.0], ECHO_PAYLOAD)]


def floor_row(kind: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """One floor process, pinned to the server core, for warm-up + duration."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--port", str(port),
         "--sockets", str(args.sockets), "--warmup", str(args.warmup),
         "--duration", str(args.duration), "--server-core", str(args.server_core)],
        check=True, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S).stdout
    row: dict[str, Any] = json.loads(out)
    row["cpu_us"] = row["user_us"] + row["system_us"]
    return row


# -- the kernel ------------------------------------------------------------------------------

def kernel_row(farm: Any, peer: Any, kernel: psutil.Process,
               args: argparse.Namespace) -> dict[str, Any]:
    """peers.py's net-echo, with the kernel's user and system time kept apart."""
    plans, per, cleanup = peers.workload("net-echo", farm, peer.address, args)
    try:
        row = loaded_row("kernel", plans, per, kernel, args)
    finally:
        cleanup()
    row["compiled"] = farm.call("kernel.stats")["compiled"]
    return row


def loaded_row(name: str, plans: list[Any], per: int, server: psutil.Process,
               args: argparse.Namespace) -> dict[str, Any]:
    """Drive ``plans`` from the load core; ``server``'s user and system time per round
    trip of ``per`` requests."""
    times: list[Any] = []
    result = run_load(plans, duration_s=args.duration, warmup_s=args.warmup,
                      processes=args.load_processes, cores=[args.load_core],
                      on_window_start=lambda: times.append(server.cpu_times()),
                      on_window_end=lambda: times.append(server.cpu_times()))
    trips = max(result.ops // per, 1)
    user = (times[1].user - times[0].user) / trips * 1e6
    system = (times[1].system - times[0].system) / trips * 1e6
    return {"name": name, "round_trips": trips,
            "round_trips_per_s": result.ops_per_s / per, "user_us": user,
            "system_us": system, "cpu_us": user + system, "errors": result.errors}


def one_round(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="kernelfarm-netfloor-") as where, \
            running_echo("bytes", cpu=args.load_core) as peer:
        rows = [floor_row(kind, peer.address[1], args) for kind in FLOORS]
        rows.append(floor_rpc_row(peer.address[1], args))
        with running_farm(["--kernels", "1"], Path(where), "always") as farm:
            kernel = psutil.Process(farm.server_pids[0]).children()[0]
            rows.append(kernel_row(farm, peer, kernel, args))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sockets", type=int, default=800,
                        help="open sockets, one round trip in flight each (peers: 50 x 16)")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--child", choices=(*FLOORS, FLOOR_RPC), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == FLOOR_RPC:
        psutil.Process().cpu_affinity([args.server_core])
        uvloop.run(_floor_rpc(args.port, args.sockets))
        return 0
    if args.child:
        psutil.Process().cpu_affinity([args.server_core])
        print(json.dumps(uvloop.run(_floor(args.child, args.port, args.sockets,
                                           args.warmup, args.duration))))
        return 0
    # peers.workload spreads the sockets as connections x depth
    args.connections, args.depth = args.sockets // 16, 16
    host = machine()
    rounds = [one_round(args) for _ in range(args.rounds)]
    table = Table(title=f"net-echo round trip, {args.sockets} sockets, CPU µs per round trip")
    for column in ("round", "server", "round trips/s", "user µs", "system µs", "CPU µs",
                   "÷ floor-sock", "÷ floor-rpc"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for index, rows in enumerate(rounds, 1):
        floor = rows[0]["cpu_us"]
        design = next(row for row in rows if row["name"] == FLOOR_RPC)["cpu_us"]
        for row in rows:
            row["vs_floor_sock"] = row["cpu_us"] / floor
            row["vs_floor_rpc"] = row["cpu_us"] / design
            table.add_row(str(index), row["name"], f"{row['round_trips_per_s']:,.0f}",
                          f"{row['user_us']:.2f}", f"{row['system_us']:.2f}",
                          f"{row['cpu_us']:.2f}", f"{row['vs_floor_sock']:.2f}",
                          f"{row['vs_floor_rpc']:.2f}")
    Console(width=120).print(table)
    print(f"kernel ran compiled: {', '.join(rounds[0][-1]['compiled']) or 'nothing (pure)'}")
    write_raw(args.out, "net_floor", {"rounds": rounds}, host=host, args=args,
              internal=("child", "port"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
