"""TCP through the net subsystem against real peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import time
from typing import Any

import pytest
import uvloop

from net_harness import plain_listener

NS = "alice"


@pytest.mark.asyncio
async def test_connect_send_recv_and_half_close_against_echo_peer(make_net: Any,
                                                                  echo_port: int) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)  # as in a kernel
    net = make_net().client()
    async with net.socket(NS, "tcp") as sock:
        await sock.connect("127.0.0.1", echo_port)
        assert await sock.send(b"hello, farm") == 11
        await sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := await sock.recv(4, timeout=5):
            received += chunk
        assert received == b"hello, farm"
        assert await sock.recv(100, timeout=5) == b""  # stays at end of stream
    stats = await net.stats(NS)
    assert stats["connects"] == 1
    assert stats["bytes_out"] == 11 and stats["bytes_in"] == 11
    assert stats["sockets_open"] == 0


@pytest.mark.asyncio
async def test_listening_farm_socket_accepts_a_plain_socket(make_net: Any) -> None:
    net = make_net().client()
    loop = asyncio.get_running_loop()
    listener = await net.socket(NS, "tcp")
    host, port = await listener.bind("127.0.0.1", 0)
    assert host == "127.0.0.1" and port > 0
    await listener.listen(8)
    with socket.socket() as plain:
        plain.setblocking(False)
        await loop.sock_connect(plain, (host, port))
        conn, peer = await listener.accept(timeout=5)
        assert peer == plain.getsockname()
        await loop.sock_sendall(plain, b"ping")
        assert await conn.recv(100, timeout=5) == b"ping"
        await conn.sendall(b"pong")
        assert await asyncio.wait_for(loop.sock_recv(plain, 100), 5) == b"pong"
        await conn.close()
        assert await asyncio.wait_for(loop.sock_recv(plain, 100), 5) == b""
    listed = await net.list(NS)
    assert [(row["sid"], row["listening"]) for row in listed] == [(listener.sid, True)]
    assert (await net.stats(NS))["accepts"] == 1


@pytest.mark.asyncio
async def test_connect_to_a_closed_port_is_econnrefused(make_net: Any) -> None:
    net = make_net().client()
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        sock = await net.socket(NS, "tcp")
        with pytest.raises(ConnectionRefusedError) as info:
            await sock.connect(*bound_not_listening.getsockname())
        assert info.value.errno == errno.ECONNREFUSED
    assert (await net.stats(NS))["errors"] == 1


@pytest.mark.asyncio
async def test_bind_to_a_port_in_use_is_eaddrinuse(make_net: Any) -> None:
    net = make_net().client()
    with plain_listener("127.0.0.1") as taken:
        sock = await net.socket(NS, "tcp")
        with pytest.raises(OSError) as info:
            await sock.bind(*taken.getsockname())
        assert info.value.errno == errno.EADDRINUSE


@pytest.mark.asyncio
async def test_recv_times_out_with_etimedout(make_net: Any) -> None:
    net = make_net().client()
    with plain_listener("127.0.0.1") as silent:
        sock = await net.socket(NS, "tcp")
        await sock.connect(*silent.getsockname())
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            await sock.recv(100, timeout=0.05)
        assert info.value.errno == errno.ETIMEDOUT
        assert time.monotonic() - started >= 0.04  # uvloop's clock has 1 ms resolution
        # The socket is still usable after a timeout.
        peer, _ = silent.accept()
        with peer:
            peer.sendall(b"late")
            assert await sock.recv(100, timeout=5) == b"late"


@pytest.mark.asyncio
async def test_accept_times_out_and_closing_wakes_waiters_with_ebadf(make_net: Any) -> None:
    net = make_net().client()
    listener = await net.socket(NS, "tcp")
    await listener.bind("127.0.0.1", 0)
    await listener.listen(8)
    with pytest.raises(TimeoutError):
        await listener.accept(timeout=0)
    waiting = [asyncio.ensure_future(listener.accept(timeout=30)) for _ in range(2)]
    await asyncio.sleep(0)  # let both requests start waiting
    await listener.close()
    for waiter in waiting:
        with pytest.raises(OSError) as info:
            await asyncio.wait_for(waiter, 5)
        assert info.value.errno == errno.EBADF


@pytest.mark.asyncio
async def test_pipelined_recvs_on_one_socket_each_get_data(make_net: Any) -> None:
    net = make_net().client()
    with plain_listener("127.0.0.1") as server:
        sock = await net.socket(NS, "tcp")
        await sock.connect(*server.getsockname())
        peer, _ = server.accept()
        with peer:
            readers = [asyncio.ensure_future(sock.recv(1, timeout=5)) for _ in range(3)]
            await asyncio.sleep(0)
            peer.sendall(b"abc")
            got = await asyncio.wait_for(asyncio.gather(*readers), 5)
        assert sorted(got) == [b"a", b"b", b"c"]


@pytest.mark.asyncio
async def test_64_mib_streamed_through_a_farm_socket_arrives_intact(make_net: Any,
                                                                     echo_port: int) -> None:
    """Send and receive concurrently through the echo peer: the kernel never holds more
    than one request's data, and the bytes come back in order."""
    total = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    net = make_net(max_recv_bytes=256 * 1024).client()
    sock = await net.socket(NS, "tcp")
    await sock.connect("127.0.0.1", echo_port)
    sent_hash = hashlib.sha256()

    async def produce() -> None:
        for i in range(total // len(block)):
            piece = block[i % 7:] + block[:i % 7]  # vary the data so reordering would show
            sent_hash.update(piece)
            await sock.sendall(piece)
        await sock.shutdown(socket.SHUT_WR)

    async def consume() -> tuple[int, str]:
        got = hashlib.sha256()
        count = 0
        while chunk := await sock.recv(1024 * 1024, timeout=30):
            assert len(chunk) <= 256 * 1024  # max_recv_bytes bounds every reply
            got.update(chunk)
            count += len(chunk)
        return count, got.hexdigest()

    _, (count, digest) = await asyncio.wait_for(asyncio.gather(produce(), consume()), 120)
    assert count == total
    assert digest == sent_hash.hexdigest()
    await sock.close()


@pytest.mark.asyncio
async def test_connect_that_gets_no_answer_times_out_with_etimedout(make_net: Any) -> None:
    """A listener whose accept queue is full drops new SYNs: the connect hangs."""
    net = make_net().client()
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(full.getsockname())
                fillers.append(filler)
            sock = await net.socket(NS, "tcp")
            with pytest.raises(TimeoutError) as info:
                await sock.connect(*full.getsockname(), timeout=0.2)
            assert info.value.errno == errno.ETIMEDOUT
        finally:
            for filler in fillers:
                filler.close()
