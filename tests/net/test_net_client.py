"""client.net: the socket objects of the blocking and the asyncio client."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from kernelfarm.config import build
from kernelfarm.errors import posix
from kernelfarm.client import NetApi
from kernelfarm.client._sync.net import SENDALL_CHUNK
from kernelfarm.net.subsystem import NetSubsystem
from net_harness import FakeConnection, FakeKernel, NetHarness, plain_listener


class ScriptedCall:
    """A ``call`` that records requests and takes at most ``limit`` bytes per send."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.requests: list[tuple[Any, ...]] = []

    def __call__(self, method: str, *params: Any) -> Any:
        self.requests.append((method, *params))
        if method == "net.socket":
            return 7
        if method == "net.send":
            return min(len(params[2]), self.limit)
        if method == "net.close":
            raise posix(errno.EBADF, "already gone")
        return None


def test_sendall_chunks_and_resends_the_unsent_rest() -> None:
    call = ScriptedCall(limit=SENDALL_CHUNK // 3)
    data = bytes(range(256)) * (SENDALL_CHUNK // 128)  # two chunks' worth
    with NetApi(call).socket("alice") as sock:
        sock.sendall(data, timeout=2.5)
    sends = [request for request in call.requests if request[0] == "net.send"]
    assert all(len(r[3]) <= SENDALL_CHUNK and r[4] == 2.5 for r in sends)
    assert b"".join(bytes(r[3][:call.limit]) for r in sends) == data
    # __exit__ closed it; EBADF (the kernel closed it first) is not an error to the caller
    assert call.requests[-1] == ("net.close", "alice", 7)


def test_timeouts_left_out_are_not_sent() -> None:
    call = ScriptedCall(limit=10)
    sock = NetApi(call).socket("alice", "udp")
    sock.connect("127.0.0.1", 9)
    sock.send(b"abc")
    assert call.requests[1:] == [("net.connect", "alice", 7, "127.0.0.1", 9),
                                 ("net.send", "alice", 7, b"abc")]


@pytest.fixture
def kernel_thread(tmp_path: Any) -> Iterator[Any]:
    """A uvloop loop in a thread serving a NetSubsystem, and a blocking ``call`` into it —
    the shape of the blocking client talking to a kernel, without the RPC."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    net = NetSubsystem(FakeKernel(build({}), tmp_path, loop))
    harness = NetHarness(net)
    conn = FakeConnection()

    def call(method: str, *params: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(harness.call(conn, method, *params), loop)
        return future.result(10)

    try:
        yield call
    finally:
        loop.call_soon_threadsafe(net.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_blocking_client_accepts_and_echoes(kernel_thread: Any) -> None:
    net = NetApi(kernel_thread)
    with net.socket("alice", "tcp") as listener:
        address = listener.bind("127.0.0.1", 0)
        listener.listen()
        with socket.create_connection(address, timeout=5) as plain:
            conn, peer = listener.accept(timeout=5)
            assert peer == plain.getsockname()
            with conn:
                plain.sendall(b"hi")
                assert conn.recv(10, timeout=5) == b"hi"
                conn.sendall(b"there")
                assert plain.recv(10) == b"there"
            assert plain.recv(10) == b""  # leaving the with block closed it
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.01)
    assert net.list("alice") == []
    assert net.stats("alice")["accepts"] == 1


def test_blocking_client_udp(kernel_thread: Any) -> None:
    net = NetApi(kernel_thread)
    with net.socket("alice", "udp") as farm, \
            plain_listener("127.0.0.1", socket.SOCK_DGRAM) as plain:
        address = farm.bind("127.0.0.1", 0)
        farm.sendto(b"ping", plain.getsockname())
        plain.settimeout(5)
        data, source = plain.recvfrom(10)
        assert (data, source) == (b"ping", address)
        plain.sendto(b"pong", address)
        assert farm.recvfrom(10, timeout=5) == (b"pong", plain.getsockname())
