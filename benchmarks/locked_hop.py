"""What a locked kernel's ``net.recv`` costs when its connection's thread does not hold the
socket, in CPU µs per recv (both serving threads), with no RPC.

The locked baseline runs one kernel with N threads; a namespace's sockets are watched by
the loop of the thread that made them (their home).  A ``net.recv`` that arrives on the
other thread either hops to the home loop and back (two cross-thread wake-ups: issue 14
before its sixth pass) or is served where it arrives, under the namespace's lock (after).
This script measures exactly that: a real :class:`~kernelfarm.kernel.locked.LockedKernel`
served by two uvloop threads, ``--sockets`` namespace sockets connected to host peers, the
data of each round already read ahead by the home loop, then one ``net.recv`` per socket
made on the other thread and timed (process CPU time, which is both threads' here) until
every answer is back on that thread.  Run it under each tree to compare (``PYTHONPATH``
at a checkout of the old one): the code it calls is the same in both.

    python benchmarks/locked_hop.py [--sockets 64] [--rounds 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import threading
import time
from typing import Any

import uvloop

from kernelfarm import config as configuration
from kernelfarm.boot import BootInfo
from kernelfarm.kernel.process import make_kernel
from kernelfarm.rpc.answer import Answer

DEADLINE_S = 10.0
PAYLOAD = b"x" * 64


class Connection:
    """A client connection of one serving thread that counts its answers."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.closed = False
        self.answers = 0
        self.arrived = threading.Condition()

    def on_close(self, callback: Any) -> None:
        pass

    def start_call(self, msgid: int, awaitable: Any, reserve: int = 0) -> None:
        if isinstance(awaitable, Answer):  # a recv that waits
            awaitable.deliver_to(self, msgid, reserve)
            return

        def finished(task: asyncio.Future[Any]) -> None:  # a connect
            self.answered(msgid, reserve, task.result(), None)

        asyncio.ensure_future(awaitable).add_done_callback(finished)

    def answered(self, msgid: int, reserve: int, result: Any,
                 error: BaseException | None) -> None:
        assert error is None and result in (None, PAYLOAD), (result, error)
        self.count(1)

    def count(self, n: int) -> None:
        with self.arrived:
            self.answers += n
            self.arrived.notify_all()

    def wait_for(self, total: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.answers >= total, DEADLINE_S)


class Thread:
    """A serving thread: its own uvloop loop."""

    def __init__(self, name: str) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(DEADLINE_S)


def wait_until(predicate: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def measure(sockets: int, rounds: int, data_dir: str) -> float:
    """CPU µs per recv made on the thread that does not hold the sockets."""
    home, other = Thread("home"), Thread("other")
    config = configuration.load()
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, 16383, 0]],
                    addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                    data_dir=data_dir, supervisor_pid=0, mode="locked", threads=2)
    kernel = home.call(make_kernel, boot, config, home.loop)
    at_home, away = Connection(kernel.gate.trusted), Connection(kernel.gate.trusted)
    net = next(s for s in kernel.subsystems if s.name == "net")
    peers: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        sids = []
        for n in range(sockets):
            sid = home.call(kernel.handle, at_home, n, "net.socket", ("ns", "tcp"))[3]
            home.call(kernel.handle, at_home, n, "net.connect", ("ns", sid, "127.0.0.1", port))
            at_home.wait_for(n + 1)
            peers.append(listener.accept()[0])
            sids.append(sid)
    farm_socks = [net.namespaces["ns"].sockets[sid] for sid in sids]
    # One wait per socket on its home loop: its watch stays on and reads ahead.
    at_home.answers = 0
    for n, sid in enumerate(sids):
        assert home.call(kernel.handle, at_home, n, "net.recv", ("ns", sid, 128, 5.0)) is None
    for peer in peers:
        peer.sendall(PAYLOAD)
    at_home.wait_for(sockets)

    def recv_all() -> None:
        answered = 0
        for n, sid in enumerate(sids):
            if kernel.handle(away, n, "net.recv", ("ns", sid, 128, 5.0)) is not None:
                answered += 1  # answered at once, on this thread
        if answered:
            away.count(answered)

    cpu = 0.0
    for _ in range(rounds):
        for peer in peers:
            peer.sendall(PAYLOAD)
        wait_until(lambda: all(s.pending is not None for s in farm_socks))
        target = away.answers + sockets
        start = time.process_time()
        other.loop.call_soon_threadsafe(recv_all)
        away.wait_for(target)
        cpu += time.process_time() - start
    home.call(kernel.close)
    for thread in (home, other):
        thread.loop.call_soon_threadsafe(thread.loop.stop)
        thread.thread.join(DEADLINE_S)
    for peer in peers:
        peer.close()
    return cpu / (rounds * sockets) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="kernelfarm-locked-hop-") as data_dir:
            figures.append(measure(args.sockets, args.rounds, data_dir))
    print(f"net.recv away from the socket's thread: {statistics.median(figures):.2f} µs "
          f"of CPU per recv (median of {', '.join(f'{f:.2f}' for f in figures)})")


if __name__ == "__main__":
    main()
