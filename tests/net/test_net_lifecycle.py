"""Socket lifetimes and limits: connections, keep, EMFILE, EBADF, slots, shutdown."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from typing import Any

import pytest

from kernelfarm.errors import TryAgain
from kernelfarm.net.handoff_budget import FailureBudget
from kernelfarm.partition import key_slot
from net_harness import FakeConnection, plain_listener


async def peer_sees_eof(peer: socket.socket) -> bool:
    loop = asyncio.get_running_loop()
    peer.setblocking(False)
    return await asyncio.wait_for(loop.sock_recv(peer, 100), 5) == b""


@pytest.mark.asyncio
async def test_socket_limit_is_emfile_and_closing_makes_room(make_net: Any) -> None:
    net = make_net(max_sockets=2).client()
    first = await net.socket("dave", "tcp")
    await net.socket("dave", "udp")
    with pytest.raises(OSError) as info:
        await net.socket("dave", "tcp")
    assert info.value.errno == errno.EMFILE
    await net.socket("erin", "tcp")  # the limit is per namespace
    await first.close()
    await net.socket("dave", "tcp")


@pytest.mark.asyncio
async def test_accept_at_the_limit_is_emfile_and_leaves_the_connection_queued(
        make_net: Any) -> None:
    net = make_net(max_sockets=2).client()
    listener = await net.socket("dave", "tcp")
    address = await listener.bind("127.0.0.1", 0)
    await listener.listen(8)
    with socket.create_connection(address, timeout=5) as one, \
            socket.create_connection(address, timeout=5) as two:
        accepted, peer = await listener.accept(timeout=5)
        assert peer == one.getsockname()
        with pytest.raises(OSError) as info:
            await listener.accept(timeout=5)
        assert info.value.errno == errno.EMFILE
        await accepted.close()
        _, peer = await listener.accept(timeout=5)
        assert peer == two.getsockname()


@pytest.mark.asyncio
async def test_unknown_or_closed_socket_is_ebadf(make_net: Any) -> None:
    harness = make_net()
    net = harness.client()
    sock = await net.socket("dave", "tcp")
    for ns, sid in (("dave", sock.sid + 1), ("nobody", 1), ("dave", -1)):
        with pytest.raises(OSError) as info:
            await harness.call(FakeConnection(), "net.recv", ns, sid, 10, 0)
        assert info.value.errno == errno.EBADF
    await sock.close()
    with pytest.raises(OSError) as info:
        await sock.send(b"x")
    assert info.value.errno == errno.EBADF
    await sock.close()  # closing twice is harmless on the client


@pytest.mark.asyncio
@pytest.mark.parametrize("method, params", [
    ("net.socket", ["dave", "sctp"]),
    ("net.socket", [7, "tcp"]),              # namespace must be a str (partition key)
    ("net.socket", ["", "tcp"]),
    ("net.recv", ["dave", "1", 10, 0]),
    ("net.recv", ["dave", 1, 0, 0]),
    ("net.recv", ["dave", 1, 10, -1]),
    ("net.recv", ["dave", 1, 10, "soon"]),
    ("net.send", ["dave", 1, "text, not bytes"]),
    ("net.shutdown", ["dave", 1, 3]),
    ("net.listen", ["dave", 1, -5]),
    ("net.connect", ["dave", 1, "127.0.0.1"]),  # missing port
])
async def test_bad_parameters_are_einval(make_net: Any, method: str,
                                         params: list[Any]) -> None:
    harness = make_net()
    await harness.call(FakeConnection(), "net.socket", "dave", "tcp")
    with pytest.raises(OSError) as info:
        await harness.call(FakeConnection(), method, *params)
    assert info.value.errno == errno.EINVAL


@pytest.mark.asyncio
async def test_a_sid_that_only_equals_a_socket_is_einval_not_that_socket(
        make_net: Any) -> None:
    """The data calls find a socket by dict subscript, which a float equal to its sid
    would pass (equal hash): the sid must be an int, so the call is EINVAL, and an
    unhashable sid is EINVAL too, never another error."""
    harness = make_net()
    conn = FakeConnection()
    sid = await harness.call(conn, "net.socket", "dave", "tcp")
    for wrong in (float(sid), [sid]):
        for method, params in (("net.send", [b"x"]), ("net.recv", [10, 0.0])):
            with pytest.raises(OSError) as info:
                await harness.call(conn, method, "dave", wrong, *params)
            assert info.value.errno == errno.EINVAL, (method, wrong)


@pytest.mark.asyncio
async def test_dropping_a_connection_closes_its_sockets_but_not_kept_ones(
        make_net: Any) -> None:
    harness = make_net()
    conn_a, conn_b = FakeConnection(), FakeConnection()
    net_a, net_b = harness.client(conn_a), harness.client(conn_b)
    with plain_listener("127.0.0.1") as server:
        sock_a = await net_a.socket("frank", "tcp")
        await sock_a.connect(*server.getsockname())
        peer_a, _ = server.accept()
        sock_b = await net_b.socket("frank", "tcp")
        await sock_b.connect(*server.getsockname())
        peer_b, _ = server.accept()
        kept = await net_a.socket("frank", "tcp")
        await kept.bind("127.0.0.1", 0)
        await kept.listen(4)
        await kept.keep()
        closed_early = await net_a.socket("frank", "udp")
        await closed_early.close()

        conn_a.close()

        assert await peer_sees_eof(peer_a)
        listed = {row["sid"]: row for row in await net_b.list("frank")}
        assert set(listed) == {sock_b.sid, kept.sid}
        assert listed[kept.sid]["kept"] is True
        await sock_b.send(b"still here")
        peer_b.settimeout(5)
        assert peer_b.recv(100) == b"still here"
        peer_a.close()
        peer_b.close()
    assert harness.net._owned == {id(conn_b): {("frank", sock_b.sid)}}


@pytest.mark.asyncio
async def test_accepted_sockets_belong_to_the_accepting_connection(make_net: Any) -> None:
    harness = make_net()
    owner, acceptor = FakeConnection(), FakeConnection()
    listener = await harness.client(owner).socket("gina", "tcp")
    address = await listener.bind("127.0.0.1", 0)
    await listener.listen(4)
    with socket.create_connection(address, timeout=5) as plain:
        # Any connection may use any sid of the namespace; what it accepts is its own.
        await harness.call(acceptor, "net.accept", "gina", listener.sid, 5)
        acceptor.close()
        assert await peer_sees_eof(plain)
    assert [row["sid"] for row in await harness.client(owner).list("gina")] == [listener.sid]


@pytest.mark.asyncio
async def test_release_slot_parks_only_that_slots_sockets_and_a_rollback_resumes_them(
        make_net: Any) -> None:
    """Releasing a slot (its namespace moves to another kernel) closes nothing: the
    sockets are parked, a request waiting on one is answered TRYAGAIN (its client retries
    at the new owner), unread bytes stay in the host socket, and a rolled-back move
    (``load_slots``) gives the same socket back under the same sid."""
    harness = make_net()
    owner = FakeConnection()
    net = harness.client(owner)
    names = ["alice", "bob"]
    assert key_slot(names[0]) != key_slot(names[1])
    with plain_listener("127.0.0.1") as server:
        socks = {}
        peers = {}
        for name in names:
            socks[name] = await net.socket(name, "tcp")
            await socks[name].connect(*server.getsockname())
            peers[name], _ = server.accept()
        waiting = asyncio.ensure_future(socks["alice"].recv(10, timeout=5))
        await asyncio.sleep(0)  # the recv waits on the host socket now
        harness.net.release_slot(key_slot("alice"))
        with pytest.raises(TryAgain):
            await waiting
        peers["alice"].sendall(b"while away")
        assert await net.list("alice") == []
        assert len(await net.list("bob")) == 1
        assert harness.net.stats()["namespaces"] == 1
        harness.net.load_slots([key_slot("alice")])
        other = FakeConnection()  # the connection to the new owner is another one
        back = harness.client(other)
        assert await back.list("alice") != []
        assert await harness.call(other, "net.recv", "alice", socks["alice"].sid, 100,
                                  5) == b"while away"
        owner.close()  # the first connection that named it claimed it: not this one
        assert await peer_sees_eof(peers["bob"])
        peers["alice"].sendall(b"still here")
        assert await harness.call(other, "net.recv", "alice", socks["alice"].sid, 100,
                                  5) == b"still here"
        other.close()
        assert await peer_sees_eof(peers["alice"])
        for peer in peers.values():
            peer.close()


@pytest.mark.asyncio
async def test_a_connect_interrupted_by_a_move_completes_when_retried(make_net: Any) -> None:
    """The client retries a connect answered TRYAGAIN while the host was still connecting:
    the retry waits for that connection (``EALREADY``), then succeeds.  The listener's
    full backlog holds the connect in SYN_SENT until the test accepts."""
    harness = make_net()
    conn = FakeConnection()
    sock = await harness.client(conn).socket("alice", "tcp")
    with socket.create_server(("127.0.0.1", 0), backlog=0) as server:
        address = server.getsockname()
        filler = socket.create_connection(address, timeout=5)  # the backlog is full now
        connecting = asyncio.ensure_future(harness.call(conn, "net.connect", "alice",
                                                        sock.sid, *address, 10))
        farm_sock = harness.net.namespaces["alice"].sockets[sock.sid]
        async with asyncio.timeout(5):
            while not farm_sock.connecting:
                await asyncio.sleep(0.005)
        harness.net.release_slot(key_slot("alice"))
        with pytest.raises(TryAgain):
            await connecting
        harness.net.load_slots([key_slot("alice")])
        server.accept()[0].close()  # room in the backlog: the next SYN gets through
        filler.close()
        await harness.call(conn, "net.connect", "alice", sock.sid, *address, 10)
        peer, _ = server.accept()
        with peer:
            await sock.sendall(b"connected once")
            peer.settimeout(5)
            assert peer.recv(14, socket.MSG_WAITALL) == b"connected once"


@pytest.mark.asyncio
async def test_a_moved_socket_no_connection_names_is_closed_after_max_timeout(
        make_net: Any) -> None:
    """Its client died while the namespace moved: nothing else would ever close it."""
    harness = make_net(max_timeout=0.3)
    owner = FakeConnection()
    net = harness.client(owner)
    with plain_listener("127.0.0.1") as server:
        orphan, named = await net.socket("alice", "tcp"), await net.socket("alice", "tcp")
        for sock in (orphan, named):
            await sock.connect(*server.getsockname())
        orphan_peer, _ = server.accept()
        named_peer, _ = server.accept()
        with orphan_peer, named_peer:
            harness.net.release_slot(key_slot("alice"))
            harness.net.load_slots([key_slot("alice")])
            owner.close()  # tied to nothing any more: this closes neither
            again = FakeConnection()
            assert await harness.call(again, "net.send", "alice", named.sid, b"mine") == 4
            assert await peer_sees_eof(orphan_peer)
            assert await harness.call(again, "net.send", "alice", named.sid, b"!") == 1
            named_peer.settimeout(5)
            assert named_peer.recv(5, socket.MSG_WAITALL) == b"mine!"


@pytest.mark.asyncio
async def test_parked_sockets_close_with_the_subsystem(make_net: Any) -> None:
    harness = make_net()
    with plain_listener("127.0.0.1") as server:
        sock = await harness.client().socket("alice", "tcp")
        await sock.connect(*server.getsockname())
        peer, _ = server.accept()
        with peer:
            harness.net.release_slot(key_slot("alice"))
            harness.net.close()
            assert await peer_sees_eof(peer)


@pytest.mark.asyncio
async def test_stats_and_close_of_the_subsystem(make_net: Any) -> None:
    harness = make_net()
    net = harness.client()
    threads_before = threading.active_count()
    with plain_listener("127.0.0.1") as server:
        sock = await net.socket("hank", "tcp")
        await sock.connect(*server.getsockname())
        await sock.sendall(b"12345")
        udp = await net.socket("ivy", "udp")
        await udp.bind("127.0.0.1", 0)
        assert harness.net.stats() == {"namespaces": 2, "sockets": 2, "relays": 0,
                                       "bytes_in": 0, "bytes_out": 5}
        assert threading.active_count() == threads_before  # one OS thread stays one
        peer, _ = server.accept()
        peer.settimeout(5)
        assert peer.recv(100) == b"12345"
        harness.net.close()
        assert await peer_sees_eof(peer)
        peer.close()
    assert harness.net.stats()["sockets"] == 0
    assert (await net.stats("nobody"))["sockets_open"] == 0


@pytest.mark.asyncio
async def test_a_namespace_of_relays_only_is_freed_with_its_last_relay(make_net: Any) -> None:
    """A SOCKS hand-off leaves a namespace holding a relay and no socket: when the relay
    ends, the namespace goes too (as one whose last socket closed).  A hand-off whose
    connect fails leaves nothing behind either."""
    harness = make_net()
    net = harness.net
    with plain_listener("127.0.0.1") as server:
        host, port = server.getsockname()
        front, handed = socket.socketpair()
        await net.handoff.relay({"ns": "relayed", "host": host, "port": port},
                                handed.detach(), FailureBudget())
        upstream, _ = server.accept()  # connected before relay() returned
        assert set(net.namespaces) == {"relayed"}
        assert net.stats()["relays"] == 1 and net.kernel_sockets.open == 0
        front.close()
        upstream.close()
        async with asyncio.timeout(5):
            while net.namespaces:
                await asyncio.sleep(0.005)
        assert net.stats()["namespaces"] == net.stats()["relays"] == 0
        assert (await harness.client().stats("relayed"))["sockets_open"] == 0
    front, handed = socket.socketpair()
    with pytest.raises(ConnectionRefusedError):
        await net.handoff.relay({"ns": "refused", "host": host, "port": port},
                                handed.detach(), FailureBudget())  # listener closed: refused
    front.close()
    assert net.namespaces == {}
