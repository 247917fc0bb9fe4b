"""The locked baseline's hop: a net call made on one thread for a socket another thread's
loop holds runs there, and its answer comes back to the caller's thread, lost by nobody.

Two real event loops in two threads share one :class:`LockedKernel`, as its serving
threads do; the sockets are real loopback TCP sockets.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from farmctl import wait_until
from kernelfarm import config as configuration
from kernelfarm.boot import BootInfo
from kernelfarm.kernel.locked import LockedKernel
from kernelfarm.kernel.process import make_kernel
from kernelfarm.net.subsystem import NetSubsystem
from kernelfarm.rpc.answer import Answer

DEADLINE = 10.0


class Connection:
    """A client connection of one serving thread: it records each reply with the thread
    that made it (a connection is only ever touched by its own loop's thread)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.closed = False
        self.replies: dict[int, tuple[str, Any, BaseException | None]] = {}
        self.arrived = threading.Condition()

    def on_close(self, callback: Any) -> None:
        pass

    def start_call(self, msgid: int, awaitable: Any, reserve: int = 0) -> None:
        if isinstance(awaitable, Answer):
            awaitable.deliver_to(self, msgid, reserve)
            return

        def finished(task: asyncio.Future[Any]) -> None:
            error = task.exception()
            self.answered(msgid, reserve, None if error else task.result(), error)

        asyncio.ensure_future(awaitable).add_done_callback(finished)

    def answered(self, msgid: int, reserve: int, result: Any,
                 error: BaseException | None) -> None:
        with self.arrived:
            self.replies[msgid] = (threading.current_thread().name, result, error)
            self.arrived.notify_all()

    def reply(self, msgid: int) -> tuple[str, Any, BaseException | None]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: msgid in self.replies, DEADLINE), msgid
            return self.replies[msgid]


class Thread:
    """A serving thread: its own uvloop loop, on which calls are made as requests are."""

    def __init__(self, name: str) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name)
        self.thread.start()

    def call(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(DEADLINE)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


@dataclass
class Hop:
    """One locked kernel served by two threads' loops, and a namespace socket whose home
    is ``home``'s loop, connected to a host ``peer``; ``away`` is a connection of the
    ``other`` thread, ``at_home`` one of the home thread."""

    kernel: LockedKernel
    home: Thread
    other: Thread
    at_home: Connection
    away: Connection
    sid: int
    peer: socket.socket

    def handle(self, thread: Thread, conn: Connection, msgid: int, method: str,
               params: list[Any]) -> Any:
        return thread.call(self.kernel.handle, conn, msgid, method, params)

    def socket(self) -> Any:
        """The namespace socket itself (its ``pending``: what the home loop read ahead)."""
        net = next(s for s in self.kernel.subsystems if isinstance(s, NetSubsystem))
        return net.namespaces["ns"].sockets[self.sid]

    def watch_at_home(self) -> None:
        """One recv waited on the home loop: its watch of the socket stays on, and what
        comes while nobody waits is read ahead there (``pending``)."""
        assert self.handle(self.home, self.at_home, 90, "net.recv",
                           ["ns", self.sid, 64, 5.0]) is None
        self.peer.sendall(b"first")
        assert self.at_home.reply(90) == ("home", b"first", None)


@pytest.fixture
def hop(tmp_path: Path) -> Iterator[Hop]:
    home, other = Thread("home"), Thread("other")
    config = configuration.load()
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, 16383, 0]],
                    addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                    data_dir=str(tmp_path), supervisor_pid=0, mode="locked", threads=2)
    kernel = home.call(make_kernel, boot, config, home.loop)
    assert isinstance(kernel, LockedKernel)
    at_home, away = Connection(kernel.gate.trusted), Connection(kernel.gate.trusted)
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            sid = home.call(kernel.handle, at_home, 1, "net.socket", ["ns", "tcp"])[3]
            assert home.call(kernel.handle, at_home, 2, "net.connect",
                             ["ns", sid, "127.0.0.1", listener.getsockname()[1]]) is None
            assert at_home.reply(2)[2] is None
            peer, _ = listener.accept()
        with peer:
            peer.settimeout(DEADLINE)
            yield Hop(kernel, home, other, at_home, away, sid, peer)
    finally:
        home.call(kernel.close)
        home.stop()
        other.stop()


def test_a_call_from_another_thread_runs_on_the_sockets_loop_and_answers_its_caller(
        hop: Hop) -> None:
    # A send from the other thread is made there, under its lock: answered at once.
    assert hop.handle(hop.other, hop.away, 3, "net.send", ["ns", hop.sid, b"ping"]) == \
        [1, 3, None, 4]
    assert hop.peer.recv(16) == b"ping"
    # A recv that must wait hops: the home loop's readiness answers the other thread.
    assert hop.handle(hop.other, hop.away, 4, "net.recv", ["ns", hop.sid, 64, 5.0]) is None
    hop.peer.sendall(b"pong")
    assert hop.away.reply(4) == ("other", b"pong", None)
    # A bad call fails at once where it was made; a failure at home comes back as data does.
    assert hop.handle(hop.other, hop.away, 5, "net.recv", ["ns", 999, 64, 5.0])[2][
        "code"] == "EBADF"
    assert hop.handle(hop.other, hop.away, 6, "net.recv", ["ns", hop.sid, 64, 5.0]) is None
    assert hop.handle(hop.home, hop.at_home, 7, "net.close", ["ns", hop.sid]) == \
        [1, 7, None, None]
    thread, _, error = hop.away.reply(6)
    assert thread == "other" and isinstance(error, OSError)


def test_a_send_from_another_thread_waits_for_room_on_the_sockets_loop(hop: Hop) -> None:
    """The host takes part of a big send: the rest waits for room on the loop that
    watches the socket, and the count comes back to the caller's thread."""
    data = bytes(range(256)) * 64 * 256  # 4 MiB: more than loopback buffers hold
    assert hop.handle(hop.other, hop.away, 3, "net.send", ["ns", hop.sid, data, 5.0]) is None
    received = bytearray()
    while len(received) < len(data):
        received += hop.peer.recv(1 << 20)
    assert hop.away.reply(3) == ("other", len(data), None)
    assert received == data


def test_a_recv_whose_connection_closed_while_it_waited_away_consumes_nothing(
        hop: Hop) -> None:
    assert hop.handle(hop.other, hop.away, 3, "net.recv", ["ns", hop.sid, 64, 5.0]) is None
    hop.home.call(lambda: None)  # the hop has reached the home loop: the recv waits there
    hop.away.closed = True
    hop.peer.sendall(b"kept")
    # The data stays for the next recv: at once if the home loop read it ahead, else
    # when it comes.
    reply = hop.handle(hop.home, hop.at_home, 4, "net.recv", ["ns", hop.sid, 64, 5.0])
    if reply is None:
        reply = [1, 4, None, hop.at_home.reply(4)[1]]
    assert reply == [1, 4, None, b"kept"]
    assert 3 not in hop.away.replies


def test_a_recv_from_another_thread_takes_what_the_home_loop_read_ahead_without_a_hop(
        hop: Hop) -> None:
    """The other thread serves the recv itself, under the namespace's lock: the reply is
    made on its own loop, at once (a hop would answer ``None`` now and reply later)."""
    hop.watch_at_home()
    hop.peer.sendall(b"pong")
    wait_until(lambda: hop.socket().pending == b"pong", what="the home loop's read-ahead")
    assert hop.handle(hop.other, hop.away, 3, "net.recv", ["ns", hop.sid, 64, 5.0]) == \
        [1, 3, None, b"pong"]
    assert hop.socket().pending is None


def test_a_recv_from_another_thread_reads_the_host_socket_when_the_home_loop_has_not(
        hop: Hop) -> None:
    """The data has come, but the home loop is busy and has not read it ahead: the other
    thread asks the host itself instead of hopping to a loop that is not free."""
    hop.watch_at_home()
    entered, free = threading.Event(), threading.Event()

    def busy() -> None:
        entered.set()
        free.wait(DEADLINE)

    hop.home.loop.call_soon_threadsafe(busy)
    try:
        assert entered.wait(DEADLINE)
        hop.peer.sendall(b"direct")
        assert select.select([hop.socket().sock], [], [], DEADLINE)[0]
        assert hop.handle(hop.other, hop.away, 3, "net.recv", ["ns", hop.sid, 64, 5.0]) == \
            [1, 3, None, b"direct"]
    finally:
        free.set()


class WatchedLock:
    """A namespace's lock that tells when its home thread waits for it."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.home_waits = threading.Event()

    def __enter__(self) -> None:
        if threading.current_thread().name == "home":
            self.home_waits.set()
        self.lock.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.lock.release()


def test_the_home_loops_read_ahead_holds_the_namespaces_lock(hop: Hop) -> None:
    """While another thread holds the namespace's lock (serving a call on its socket), the
    home loop's readiness callback waits for it before it reads into the socket."""
    sock = hop.socket()
    guard = sock.guard = WatchedLock(sock.guard)
    hop.watch_at_home()
    with guard.lock:
        guard.home_waits.clear()
        hop.peer.sendall(b"late")
        assert guard.home_waits.wait(DEADLINE), "the readiness callback took no lock"
        assert sock.pending is None
    wait_until(lambda: sock.pending == b"late", what="the read-ahead after the lock")
