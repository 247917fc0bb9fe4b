"""Connections that never say who they are cannot shut real clients out: a full listener
(``rpc.max_connections``) closes the oldest connection that has not said ``auth.hello``
to admit a new one, on a kernel and on the control port; connections that said who they
are are never closed for it, and one more of those is refused as before."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import msgpack
import pytest

import rawpeer
from farmctl import Farm, raw_call, start_farm, wait_until
from rawpeer import Peer

MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    config = f"[rpc]\nmax_connections = {MAX_CONNECTIONS}\n"
    with start_farm(tmp_path_factory.mktemp("evict"), 1, config_text=config) as farm:
        yield farm


def settled(farm: Farm) -> None:
    """The connections of the test before are released (closing is asynchronous)."""
    wait_until(lambda: raw_call(rawpeer.kernel_addr(farm.cluster_map()),
                                "kernel.stats")["connections"] <= 1,
               what="the kernel's earlier connections to be released")


def notification(sock: socket.socket) -> list[object] | None:
    """The message a connection got before EOF, or None if it got EOF alone."""
    unpacker = msgpack.Unpacker(raw=False)
    sock.settimeout(10)
    while data := sock.recv(65536):
        unpacker.feed(data)
    return next(iter(unpacker), None)


@pytest.mark.parametrize("where", ["kernel", "control"])
def test_idle_connections_without_hello_make_room_for_a_client(farm: Farm, where: str
                                                               ) -> None:
    settled(farm)
    addr = rawpeer.kernel_addr(farm.cluster_map()) if where == "kernel" else farm.control
    idle = [socket.create_connection(addr, timeout=10) for _ in range(MAX_CONNECTIONS)]
    client = None
    try:
        client = Peer(addr)  # says auth.hello first: admitted, in the place of idle[0]
        assert client.call(1, "cluster.map" if where == "control" else "kernel.ping")[2] is None
        message = notification(idle[0])
        assert message is not None and message[:2] == [2, "rpc.error"], message
        error = message[2][0]  # type: ignore[index]
        assert error["code"] == "EMFILE" and "auth.hello" in error["message"], error
    finally:
        for sock in idle:
            sock.close()
        if client is not None:
            client.close()


def test_connections_that_said_who_they_are_are_never_closed_for_room(farm: Farm) -> None:
    settled(farm)
    addr = rawpeer.kernel_addr(farm.cluster_map())
    peers = [Peer(addr) for _ in range(MAX_CONNECTIONS)]
    try:
        late = socket.create_connection(addr, timeout=10)
        message = notification(late)  # refused at once, as before
        assert message is not None and message[2][0]["code"] == "EMFILE", message  # type: ignore[index]
        late.close()
        for i, peer in enumerate(peers):
            assert peer.call(10 + i, "kernel.ping")[2] is None
    finally:
        for peer in peers:
            peer.close()


def test_a_locked_kernel_makes_room_across_its_threads(tmp_path: Path) -> None:
    """Its threads share the listener: idle connections held by one thread make room for
    clients that another thread accepts (each closed by the loop that serves it)."""
    config = f"[rpc]\nmax_connections = {MAX_CONNECTIONS}\n"
    with start_farm(tmp_path, 1, "--mode", "locked", "--threads", "2",
                    config_text=config) as farm:
        addr = rawpeer.kernel_addr(farm.cluster_map())
        settled(farm)
        idle = [socket.create_connection(addr, timeout=10) for _ in range(MAX_CONNECTIONS)]
        clients = []
        try:
            for i in range(MAX_CONNECTIONS):  # each takes the place of an idle one
                clients.append(Peer(addr))
                assert clients[-1].call(i + 1, "kernel.ping")[2] is None
            assert all(notification(sock) is not None for sock in idle)
        finally:
            for sock in idle:
                sock.close()
            for client in clients:
                client.close()
