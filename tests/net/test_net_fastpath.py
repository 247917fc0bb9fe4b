"""The net data path answers at once when the host does, and waits without a task.

A ``net.recv`` of data already there and a ``net.send`` the host takes whole are answered
by the handler itself (the kernel replies in the same turn, no coroutine, no task); a
``net.recv`` that must wait gets one future that the readiness callback settles.  These
tests use real TCP sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
from collections.abc import Iterator

import pytest

from kernelfarm.net.sockets import FarmSocket

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


@pytest.mark.asyncio
async def test_a_waiting_recv_is_one_future_settled_by_readiness(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    loop = asyncio.get_running_loop()
    farm = FarmSocket.accepted(loop, 1, ours)
    first = farm.recv(10, DEADLINE_S)
    second = farm.recv(10, DEADLINE_S)
    assert type(first) is type(loop.create_future())  # a plain future: no task, no coroutine
    peer.sendall(b"one")
    assert await asyncio.wait_for(first, DEADLINE_S) == b"one"
    assert not second.done()  # the data went to the first waiter; the second waits on
    peer.sendall(b"two")
    assert await asyncio.wait_for(second, DEADLINE_S) == b"two"
    assert farm._readers == []  # nobody waits: the descriptor is no longer watched
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
    assert farm._readers == []
    pending = farm.recv(10, DEADLINE_S)
    assert not isinstance(pending, bytes)
    farm.close()
    with pytest.raises(OSError) as info:
        await asyncio.wait_for(pending, DEADLINE_S)
    assert info.value.errno == errno.EBADF


@pytest.mark.asyncio
async def test_the_readiness_watch_outlives_a_wait_until_nobody_waits(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Request/response traffic keeps its epoll registration from one wait to the next;
    data that arrives with nobody waiting ends the watch (it would fire forever)."""
    ours, peer = pair
    loop = asyncio.get_running_loop()
    farm = FarmSocket.accepted(loop, 1, ours)
    pending = farm.recv(10, DEADLINE_S)
    peer.sendall(b"one")
    assert await asyncio.wait_for(pending, DEADLINE_S) == b"one"
    assert id(farm._readers) in farm._watched  # still watched: the next wait adds nothing
    peer.sendall(b"two")  # nobody waits for this one
    async with asyncio.timeout(DEADLINE_S):
        while id(farm._readers) in farm._watched:
            await asyncio.sleep(0.001)
    assert farm.recv(10, DEADLINE_S) == b"two"  # the data is still there for the next call
    farm.close()


@pytest.mark.asyncio
async def test_detaching_a_socket_ends_a_watch_that_outlived_its_waiters(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A socket given to a relay after a wait must not stay watched by its farm socket."""
    ours, peer = pair
    loop = asyncio.get_running_loop()
    farm = FarmSocket.accepted(loop, 1, ours)
    pending = farm.recv(10, DEADLINE_S)
    peer.sendall(b"one")
    assert await asyncio.wait_for(pending, DEADLINE_S) == b"one"
    sock = farm.detach()
    assert farm._watched == set()
    got: asyncio.Future[bytes] = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: got.done() or got.set_result(sock.recv(10)))
    peer.sendall(b"two")
    assert await asyncio.wait_for(got, DEADLINE_S) == b"two"  # the new owner reads it
    loop.remove_reader(sock.fileno())
    farm.close()
