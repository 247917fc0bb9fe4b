"""SOCKS5 side by side: direct, through ``kernelfarm socks``, and through Dante.

Two figures per system, measured in one run on the same peer and the same load generator:

- throughput of one large transfer (default 1 GiB) from a peer to the client;
- connection set-ups per second: connect, SOCKS handshake, one byte each way, close, by
  ``--processes`` client processes with ``--concurrency`` connections in flight each.

The peer is a uvloop server in its own process; Dante (``danted`` from Debian's
dante-server) listens on loopback and may connect to loopback only, as the farm's default
policy allows.  kernelfarm's clients authenticate with username/password (namespace and
token), as its contract demands; Dante is configured with no authentication (its username
method checks system accounts), which spares it one round trip per connection.

    python benchmarks/socks_bench.py [--bytes N] [--window S] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HEADER = struct.Struct("!Q")
"""A request to the peer: how many bytes to send back."""
BLOCK = 1 << 20
NAMESPACE = "bench"


# -- the peer ------------------------------------------------------------------------------

async def peer_main() -> None:
    """Serve requests of ``HEADER`` with that many bytes; print the port."""
    import uvloop  # noqa: F401  (run under uvloop by the caller)

    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setblocking(False)
    payload = memoryview(b"\xa5" * BLOCK)

    async def serve(conn: socket.socket) -> None:
        with conn:
            header = b""
            while len(header) < HEADER.size:
                chunk = await loop.sock_recv(conn, HEADER.size - len(header))
                if not chunk:
                    return
                header += chunk
            (left,) = HEADER.unpack(header)
            while left:
                step = min(left, BLOCK)
                await loop.sock_sendall(conn, payload[:step])
                left -= step

    print(listener.getsockname()[1], flush=True)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(serve(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


# -- the client side -----------------------------------------------------------------------

def socks_request(port: int) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", port)


def greeting(target: dict[str, Any]) -> tuple[bytes, bytes]:
    """What the client sends before its request, and what it expects back."""
    if not target["auth"]:
        return b"\x05\x01\x00", b"\x05\x00"
    user, password = NAMESPACE.encode(), target["token"].encode()
    return (b"\x05\x01\x02" + bytes([1, len(user)]) + user + bytes([len(password)]) + password,
            b"\x05\x02\x01\x00")


def open_blocking(target: dict[str, Any], peer: int) -> socket.socket:
    sock = socket.create_connection(tuple(target["address"]))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if target["socks"]:
        hello, expected = greeting(target)
        sock.sendall(hello + socks_request(peer))   # pipelined: one round trip
        answer = recv_exactly(sock, len(expected) + 10)
        if answer[:len(expected)] != expected or answer[len(expected) + 1] != 0:
            raise RuntimeError(f"SOCKS refused: {answer!r}")
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def transfer(target: dict[str, Any], peer: int, size: int) -> dict[str, Any]:
    """One connection, ``size`` bytes from the peer; seconds from request to last byte."""
    buffer = bytearray(4 * BLOCK)
    with open_blocking(target, peer) as sock:
        started = time.perf_counter()
        sock.sendall(HEADER.pack(size))
        left = size
        while left:
            got = sock.recv_into(buffer)
            if not got:
                raise ConnectionError(f"closed with {left} bytes to go")
            left -= got
        seconds = time.perf_counter() - started
    return {"bytes": size, "seconds": seconds, "mib_per_s": size / seconds / 2**20}


async def setups_worker(target: dict[str, Any], peer: int, deadline: float) -> int:
    host, port = target["address"]
    hello, expected = greeting(target)
    prologue = (hello + socks_request(peer) if target["socks"] else b"") + HEADER.pack(1)
    want = (len(expected) + 10 if target["socks"] else 0) + 1
    done = 0
    while time.perf_counter() < deadline:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(prologue)
        answer = await reader.readexactly(want)
        if target["socks"] and answer[len(expected) + 1] != 0:
            raise RuntimeError(f"SOCKS refused: {answer!r}")
        writer.close()
        await writer.wait_closed()
        done += 1
    return done


def setups_main(target: dict[str, Any], peer: int, window: float, concurrency: int) -> None:
    import uvloop

    async def run() -> int:
        deadline = time.perf_counter() + window
        counts = await asyncio.gather(*(setups_worker(target, peer, deadline)
                                        for _ in range(concurrency)))
        return sum(counts)

    started = time.perf_counter()
    total = uvloop.run(run())
    print(json.dumps({"setups": total, "seconds": time.perf_counter() - started}))


def setups(target: dict[str, Any], peer: int, window: float, processes: int,
           concurrency: int) -> dict[str, Any]:
    """Connection set-ups per second from ``processes`` client processes."""
    argv = [sys.executable, __file__, "--role", "setups", "--target", json.dumps(target),
            "--peer", str(peer), "--window", str(window), "--concurrency", str(concurrency)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE) for _ in range(processes)]
    results = [json.loads(p.communicate(timeout=window + 60)[0]) for p in procs]
    total = sum(r["setups"] for r in results)
    seconds = max(r["seconds"] for r in results)
    return {"setups": total, "seconds": seconds, "per_s": total / seconds,
            "processes": processes, "concurrency": concurrency}


# -- the systems ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_line(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"{proc.args!r} exited with {proc.wait()} before it served")
    return line


@contextmanager
def child(argv: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def kernelfarm_socks(scratch: Path, kernels: str) -> Iterator[dict[str, Any]]:
    from kernelfarm.auth.tokens import admin_token_of
    from kernelfarm.bench.systems import served_farm

    with served_farm(scratch, "", ["--kernels", kernels]) as farm, \
            open(scratch / "socks.log", "ab") as log, child(
                [sys.executable, "-m", "kernelfarm", "socks", "--listen", "127.0.0.1:0",
                 "--control", f"{farm.control[0]}:{farm.control[1]}",
                 "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=log) as proxy:
        listen = json.loads(first_line(proxy))["listen"]
        # The password is a tenant token: the admin's, which the first serve wrote.
        yield {"name": "kernelfarm socks", "address": listen, "socks": True, "auth": True,
               "token": admin_token_of(farm.data_dir), "kernels": farm.kernels,
               "pids": [farm.pid, proxy.pid]}


DANTE_CONFIG = """\
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 command: connect }}
"""


@contextmanager
def dante(scratch: Path) -> Iterator[dict[str, Any]]:
    danted = shutil.which("danted") or "/usr/sbin/danted"
    port = free_port()
    config = scratch / "danted.conf"
    config.write_text(DANTE_CONFIG.format(log=scratch / "danted.log", port=port))
    with child([danted, "-f", str(config), "-p", str(scratch / "danted.pid")],
               stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("danted did not start; see danted.log") from None
                time.sleep(0.05)
        yield {"name": "Dante", "address": ["127.0.0.1", port], "socks": True, "auth": False,
               "pids": [proc.pid]}


# -- the run -------------------------------------------------------------------------------

def scheduling(pids: list[int]) -> dict[int, tuple[int, int]]:
    """Per process: nanoseconds run on a CPU and waited in a run queue (schedstat)."""
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as fh:
                ran, waited, _ = fh.read().split()
            found[pid] = (int(ran), int(waited))
        except OSError:
            pass
    return found


def timed(pids: list[int], run: Any) -> tuple[Any, dict[str, float]]:
    """``run()``, and how busy the system's processes were meanwhile: CPU used and time
    spent runnable but waiting for a CPU, in percent of one CPU over the wall time."""
    before = scheduling(pids)
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    after = scheduling(pids)
    ran = sum(after[p][0] - before[p][0] for p in after if p in before)
    waited = sum(after[p][1] - before[p][1] for p in after if p in before)
    return result, {"cpu_pct": ran / wall / 1e7, "runqueue_wait_pct": waited / wall / 1e7}


def system_pids(target: dict[str, Any]) -> list[int]:
    """The processes of the system under test (every thread group's leader)."""
    import psutil

    roots = [psutil.Process(pid) for pid in target.get("pids", [])]
    return [p.pid for root in roots for p in [root, *root.children(recursive=True)]]


def measure(target: dict[str, Any], peer: int, args: argparse.Namespace) -> dict[str, Any]:
    transfer(target, peer, 64 * BLOCK)  # warm up
    pids = system_pids(target)
    throughput, throughput_sched = timed(pids, lambda: transfer(target, peer, args.bytes))
    rate, rate_sched = timed(pids, lambda: setups(target, peer, args.window, args.processes,
                                                  args.concurrency))
    shown = {key: value for key, value in target.items() if key != "token"}  # a secret
    if not pids:  # direct: no system in between to watch
        return {**shown, "throughput": throughput, "setups": rate}
    return {**shown, "throughput": {**throughput, "scheduling": throughput_sched},
            "setups": {**rate, "scheduling": rate_sched}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=2**30)
    parser.add_argument("--window", type=float, default=5.0,
                        help="seconds of each set-up measurement")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kernels", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--role", choices=["main", "peer", "setups"], default="main",
                        help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--peer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "peer":
        import uvloop

        uvloop.run(peer_main())
        return 0
    if args.role == "setups":
        setups_main(json.loads(args.target), args.peer, args.window, args.concurrency)
        return 0
    return run_all(args)


def run_all(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kernelfarm.bench.runner import machine, write_raw

    console = Console()
    host = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kf-socks-") as scratch_dir, ExitStack() as stack:
        scratch = Path(scratch_dir)
        peer_proc = stack.enter_context(child(
            [sys.executable, __file__, "--role", "peer"], stdout=subprocess.PIPE))
        peer = int(first_line(peer_proc))
        direct = {"name": "direct", "address": ["127.0.0.1", peer], "socks": False,
                  "auth": False}
        (scratch / "kf").mkdir()
        for make in (lambda: ExitStack(), lambda: kernelfarm_socks(scratch / "kf",
                                                                   args.kernels),
                     lambda: dante(scratch)):
            with make() as target:
                target = target if isinstance(target, dict) else direct
                console.print(f"measuring {target['name']} ...")
                rows.append(measure(target, peer, args))
    dante_row = rows[2]
    ours = rows[1]
    results = {"bytes": args.bytes,
               "window_s": args.window, "systems": rows,
               "ratio_to_dante": {
                   "throughput": ours["throughput"]["mib_per_s"] /
                   dante_row["throughput"]["mib_per_s"],
                   "setups": ours["setups"]["per_s"] / dante_row["setups"]["per_s"]},
               "notes": "kernelfarm authenticates (RFC 1929) on every connection; Dante is "
                        "configured without authentication.  scheduling: CPU used by the "
                        "system's processes and time they spent runnable but waiting for a "
                        "CPU (a pinned kernel cannot move to an idle core), in percent of "
                        "one CPU, over each measurement."}
    write_raw(args.out, "socks_bench", results, host=host)
    table = Table(title=f"SOCKS5: {args.bytes / 2**20:,.0f} MiB transfer and connection "
                        f"set-ups ({args.processes} x {args.concurrency} in flight)")
    for column in ("system", "MiB/s", "set-ups/s", "MiB/s vs Dante", "set-ups vs Dante",
                   "CPU % / run-queue wait %"):
        table.add_column(column, justify="right")
    dante_mib_s, dante_setups = (dante_row["throughput"]["mib_per_s"],
                                 dante_row["setups"]["per_s"])
    for row in rows:
        waits = [row[part]["scheduling"] for part in ("throughput", "setups")] \
            if "pids" in row else []
        table.add_row(row["name"], f"{row['throughput']['mib_per_s']:,.0f}",
                      f"{row['setups']['per_s']:,.0f}",
                      f"{row['throughput']['mib_per_s'] / dante_mib_s:.2f}",
                      f"{row['setups']['per_s'] / dante_setups:.2f}",
                      " ; ".join(f"{w['cpu_pct']:.0f} / {w['runqueue_wait_pct']:.0f}"
                                 for w in waits))
    console.print(table)
    plot(results, args.out / "socks_bench.png")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["systems"]
    names = [row["name"] for row in rows]
    colors = ["#999999", "#4c72b0", "#dd8452"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(names, [row["throughput"]["mib_per_s"] for row in rows], color=colors)
    left.set_ylabel(f"MiB/s ({results['bytes'] / 2**20:,.0f} MiB, one connection)")
    right.bar(names, [row["setups"]["per_s"] for row in rows], color=colors)
    right.set_ylabel("connection set-ups/s")
    figure.suptitle("SOCKS5 on loopback: direct vs kernelfarm socks vs Dante")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
