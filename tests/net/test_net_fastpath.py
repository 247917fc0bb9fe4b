"""The net data path answers at once when the host does, and waits without a task.

A ``net.recv`` of data already there and a ``net.send`` the host takes whole are answered
by the handler itself (the kernel replies in the same turn, no coroutine, no task); a
``net.recv`` that must wait gets one answer that the readiness callback hands straight to
its connection (no future).  A
request/response exchange costs one ``recv`` system call per response: the readable
watch stays on, data that came while nobody waited is read once and kept (``pending``),
and a recv never asks the host while the watch says it has nothing.  These tests use
real TCP sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kernelfarm.errors import posix
from kernelfarm.net.sockets import FarmSocket
from kernelfarm.rpc.answer import Answer

DEADLINE_S = 5.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on loopback: (the farm's end, the peer's end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=DEADLINE_S)
        ours, _ = listener.accept()
    yield ours, peer
    ours.close()
    peer.close()


def readable(sock: socket.socket) -> None:
    ready, _, _ = select.select([sock], [], [], DEADLINE_S)
    assert ready, "no data within the deadline"


class CountingSocket:
    """A host socket that counts the ``recv`` system calls made on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def counted(farm: FarmSocket) -> CountingSocket:
    assert farm.sock is not None
    counting = CountingSocket(farm.sock)
    farm.sock = counting  # type: ignore[assignment]  # a stand-in that counts host calls
    return counting


async def after_one_wait(pair: tuple[socket.socket, socket.socket], first: bytes = b"one",
                         size: int = 10) -> FarmSocket:
    """The farm's end, after one ``recv`` waited for ``first``: its readable side is
    watched from then on.  The wait's answer is awaited, as the locked baseline does
    when the socket lives on another thread's loop."""
    ours, peer = pair
    farm = FarmSocket.accepted(asyncio.get_running_loop(), 1, ours)
    waiting = farm.recv(size, DEADLINE_S)
    assert not isinstance(waiting, bytes)
    peer.sendall(first)
    assert await asyncio.wait_for(waiting, DEADLINE_S) == first
    return farm


def timer_of(farm: FarmSocket) -> asyncio.TimerHandle | None:
    """The timer of the socket's readable side (read anew: not narrowed by a check)."""
    return farm._readable.timer


async def until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.mark.asyncio
async def test_recv_of_data_already_there_and_a_whole_send_answer_at_once(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    farm = FarmSocket.accepted(asyncio.get_running_loop(), 1, ours)
    assert farm.send(b"ping", DEADLINE_S) == 4  # an int, not an awaitable
    readable(peer)
    assert peer.recv(10) == b"ping"
    peer.sendall(b"pong")
    readable(ours)
    assert farm.recv(10, DEADLINE_S) == b"pong"  # bytes, not an awaitable
    assert (farm.bytes_in, farm.bytes_out) == (4, 4)
    farm.close()


class Replies:
    """A connection as an answer sees it: the replies handed to it, in order."""

    def __init__(self) -> None:
        self.closed = False
        self.replies: list[tuple[int, int, Any, BaseException | None]] = []

    def answered(self, msgid: int, reserve: int, result: Any,
                 error: BaseException | None) -> None:
        self.replies.append((msgid, reserve, result, error))


@pytest.mark.asyncio
async def test_a_waiting_recv_is_answered_by_readiness_straight_to_its_connection(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    farm = FarmSocket.accepted(asyncio.get_running_loop(), 1, ours)
    conn = Replies()
    first, second = farm.recv(10, DEADLINE_S), farm.recv(10, DEADLINE_S)
    assert isinstance(first, Answer) and isinstance(second, Answer)  # no future, no task
    first.deliver_to(conn, 7, 10)
    second.deliver_to(conn, 8, 10)
    peer.sendall(b"one")
    await until(lambda: conn.replies)
    assert conn.replies == [(7, 10, b"one", None)]  # the second waits on
    peer.sendall(b"two")
    await until(lambda: len(conn.replies) == 2)
    assert conn.replies[1] == (8, 10, b"two", None)
    assert farm._readable.waiters == []
    farm.close()


@pytest.mark.asyncio
async def test_a_waiting_recv_whose_connection_closed_leaves_the_data_to_the_next(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """An answer nobody can receive any more must not consume data: the bytes stay for
    the next ``recv`` (another connection of the tenant, or the socket's next owner)."""
    ours, peer = pair
    farm = FarmSocket.accepted(asyncio.get_running_loop(), 1, ours)
    gone = Replies()
    abandoned = farm.recv(10, DEADLINE_S)
    assert isinstance(abandoned, Answer)
    abandoned.deliver_to(gone, 7, 10)
    gone.closed = True
    peer.sendall(b"kept")
    await until(lambda: farm.pending is not None)
    assert farm.recv(10, DEADLINE_S) == b"kept"
    assert gone.replies == []
    farm.close()


@pytest.mark.asyncio
async def test_a_waiting_recv_times_out_and_fails_on_close(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _peer = pair
    loop = asyncio.get_running_loop()
    farm = FarmSocket.accepted(loop, 1, ours)
    late = farm.recv(10, 0.05)
    assert not isinstance(late, bytes)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(late, DEADLINE_S)
    assert farm._readable.waiters == []
    pending = farm.recv(10, DEADLINE_S)
    assert not isinstance(pending, bytes)
    farm.close()
    with pytest.raises(OSError) as info:
        await asyncio.wait_for(pending, DEADLINE_S)
    assert info.value.errno == errno.EBADF


@pytest.mark.asyncio
async def test_a_request_response_exchange_costs_one_recv_call_per_response(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """The readable watch stays on between waits, and while it is on a recv does not ask
    the host first (which would say EAGAIN): only the first wait of the socket does."""
    ours, peer = pair
    farm = FarmSocket.accepted(asyncio.get_running_loop(), 1, ours)
    host = counted(farm)
    exchanges = 20
    for n in range(exchanges):
        answer = farm.recv(10, DEADLINE_S)  # asked before the peer answers: it waits
        assert not isinstance(answer, bytes)
        peer.sendall(b"%02d" % n)
        assert await asyncio.wait_for(answer, DEADLINE_S) == b"%02d" % n
    assert farm._readable.watched
    assert host.recvs == exchanges + 1  # one per answer, and the first wait's EAGAIN
    assert farm.bytes_in == farm.counters.bytes_in == 2 * exchanges
    farm.close()


@pytest.mark.asyncio
async def test_data_that_comes_while_nobody_waits_is_read_once_and_kept(
        pair: tuple[socket.socket, socket.socket]) -> None:
    peer = pair[1]
    farm = await after_one_wait(pair, size=100)
    host = counted(farm)
    calls = host.recvs
    peer.sendall(b"hello world")  # nobody waits for this one
    await until(lambda: farm.pending is not None)
    assert farm.pending == b"hello world" and host.recvs == calls + 1
    assert farm._readable.watched  # still watched: the next wait adds nothing
    assert farm.recv(5, DEADLINE_S) == b"hello"  # a smaller recv leaves the rest
    assert farm.recv(100, DEADLINE_S) == b" world"
    assert host.recvs == calls + 1  # both answered from what was read: no system call
    assert farm.bytes_in == farm.counters.bytes_in == len(b"onehello world")
    farm.close()


@pytest.mark.asyncio
async def test_a_client_that_does_not_read_makes_the_kernel_hold_one_read(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """More data while something is pending stops the watch: it stays in the host's
    buffer (the peer's backpressure), nothing is lost and all of it comes in order."""
    peer = pair[1]
    farm = await after_one_wait(pair, b"0000", size=4)
    peer.sendall(b"1111")
    await until(lambda: farm.pending is not None)
    peer.sendall(b"2222")
    await until(lambda: not farm._readable.watched)
    assert farm.pending == b"1111"  # one read of the last recv's size, no more
    got = b""
    while len(got) < 8:
        part = farm.recv(4, DEADLINE_S)
        got += part if isinstance(part, bytes) else await asyncio.wait_for(part, DEADLINE_S)
    assert got == b"11112222"
    farm.close()


@pytest.mark.asyncio
async def test_end_of_stream_while_nobody_waits_is_kept_and_ends_the_watch(
        pair: tuple[socket.socket, socket.socket]) -> None:
    peer = pair[1]
    farm = await after_one_wait(pair, b"last")
    peer.shutdown(socket.SHUT_WR)
    await until(lambda: not farm._readable.watched)  # a readable EOF would fire for ever
    assert farm.pending == b""
    assert farm.recv(10, DEADLINE_S) == b""
    assert farm.recv(10, DEADLINE_S) == b""  # and the host says so again
    farm.close()


@pytest.mark.asyncio
async def test_a_socket_keeps_one_timer_for_its_earliest_deadline(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    farm = FarmSocket.accepted(asyncio.get_running_loop(), 1, ours)
    patient = farm.recv(10, DEADLINE_S)
    timer = farm._readable.timer
    hasty = farm.recv(10, 0.05)
    assert not isinstance(hasty, bytes)
    assert farm._readable.timer is not timer  # an earlier deadline: the timer moved up
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hasty, DEADLINE_S)
    assert not isinstance(patient, bytes) and not patient.done()  # its deadline is later
    assert farm._readable.timer is not None  # set again, for the patient one
    timer = farm._readable.timer
    peer.sendall(b"late")
    assert await asyncio.wait_for(patient, DEADLINE_S) == b"late"
    again = farm.recv(10, DEADLINE_S)  # a later deadline than the timer's: no new timer
    assert not isinstance(again, bytes)
    assert farm._readable.timer is timer
    assert farm.counters.errors == 1  # the one that timed out
    farm.close()
    assert timer_of(farm) is None
    with pytest.raises(OSError):
        await asyncio.wait_for(again, DEADLINE_S)


@pytest.mark.asyncio
async def test_detaching_a_socket_ends_a_watch_that_outlived_its_waiters(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A socket given to a relay after a wait must not stay watched by its farm socket."""
    peer = pair[1]
    loop = asyncio.get_running_loop()
    farm = await after_one_wait(pair)
    sock = farm.detach()
    assert not farm._readable.watched and farm._readable.timer is None
    got: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not got.done():
            got.set_result(sock.recv(10))

    loop.add_reader(sock.fileno(), readable)
    peer.sendall(b"two")
    assert await asyncio.wait_for(got, DEADLINE_S) == b"two"  # the new owner reads it
    loop.remove_reader(sock.fileno())
    farm.close()


@pytest.mark.asyncio
async def test_a_socket_holding_data_no_recv_took_is_not_detached(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A relay would never forward what the kernel already read: refuse, lose nothing."""
    peer = pair[1]
    farm = await after_one_wait(pair)
    peer.sendall(b"two")
    await until(lambda: farm.pending is not None)
    with pytest.raises(OSError) as info:
        farm.detach()
    assert info.value.errno == errno.EBUSY
    assert farm.recv(10, DEADLINE_S) == b"two"
    farm.close()


@pytest.mark.asyncio
async def test_what_was_read_ahead_travels_with_a_moving_socket(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A socket whose namespace moves carries its pending bytes (or error) in its state:
    the kernel that takes it answers the next recv with them, nothing lost."""
    loop = asyncio.get_running_loop()
    peer = pair[1]
    farm = await after_one_wait(pair)
    peer.sendall(b"read ahead")
    await until(lambda: farm.pending is not None)
    farm.park()
    assert farm.sock is not None
    moved = FarmSocket.moved_in(loop, farm.state(), socket.socket(fileno=os.dup(
        farm.sock.fileno())))
    farm.let_go()
    assert moved.recv(100, DEADLINE_S) == b"read ahead"
    peer.sendall(b"after")
    later = moved.recv(100, DEADLINE_S)
    got = later if isinstance(later, bytes) else await asyncio.wait_for(later, DEADLINE_S)
    assert got == b"after"
    moved.pending = posix(errno.ECONNRESET, "reset")
    again = FarmSocket.moved_in(loop, moved.state(), None)
    with pytest.raises(ConnectionResetError):
        again.recv(100, DEADLINE_S)
    moved.close()
