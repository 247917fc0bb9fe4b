"""net through a real farm: ``kernelfarm serve`` processes, clients, and peers on 127.0.0.1.

One farm (two kernels) serves the whole module.  Its ``[net]`` policy is narrowed to
127.0.0.1 with a small socket limit, so the policy tests need no farm of their own; every
other test stays on 127.0.0.1 and within the limit, and uses namespaces of its own.  The
peers are ordinary sockets of this process, so the tests can say exactly what the far end
saw (bytes, EOF) instead of inferring it from the farm's replies.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import psutil
import pytest

import kernelfarm
import kernelfarm.aio
from farmctl import Farm, start_farm, wait_until
from kernelfarm.client import Socket
from kernelfarm.partition import key_slot

MAX_SOCKETS = 4
FARM_CONFIG = f'[net]\nallow = ["127.0.0.1/32"]\nmax_sockets = {MAX_SOCKETS}\n'
DEADLINE = 10.0
STREAM_BYTES = 64 * 2**20
RSS_GROWTH_LIMIT = 32 * 2**20
"""Half the stream: the kernel holds one chunk in flight each way (about 1 MiB each, plus
RPC buffers), so growth near the stream's size means the kernel held the stream."""


# -- peers --------------------------------------------------------------------------------

@dataclass
class PeerConnection:
    """What the peer saw on one accepted connection."""

    received: int = 0
    eof: threading.Event = field(default_factory=threading.Event)


class EchoPeer(socketserver.ThreadingTCPServer):
    """A TCP echo server in threads of the test process (a peer, not a kernel).

    Echoes until the client half-closes, then records the EOF and half-closes back.
    Connections are recorded by the client's address, which is the farm socket's local
    address as ``net.list`` reports it.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.connections: dict[tuple[str, int], PeerConnection] = {}

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def connection(self, address: tuple[str, int]) -> PeerConnection:
        found: PeerConnection = wait_until(lambda: self.connections.get(address), DEADLINE,
                                           f"the peer to accept {address}")
        return found


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, EchoPeer)
        seen = PeerConnection()
        self.server.connections[self.client_address[:2]] = seen
        conn: socket.socket = self.request
        while data := conn.recv(256 * 1024):
            seen.received += len(data)
            conn.sendall(data)
        seen.eof.set()
        conn.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def peer() -> Iterator[EchoPeer]:
    server = EchoPeer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


# -- the farm -----------------------------------------------------------------------------

MODES: dict[str, tuple[int, tuple[str, ...]]] = {
    "partitioned": (2, ()),
    "locked": (1, ("--mode", "locked", "--threads", "2")),   # the baseline passes them too
}


@pytest.fixture(scope="module", params=sorted(MODES))
def farm(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    kernels, args = MODES[request.param]
    with start_farm(tmp_path_factory.mktemp("netfarm"), kernels, *args,
                    config_text=FARM_CONFIG) as farm:
        yield farm


@pytest.fixture(scope="module")
def two_kernels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """For what needs two kernels to compare: always a partitioned farm."""
    with start_farm(tmp_path_factory.mktemp("netfarm2"), 2, config_text=FARM_CONFIG) as farm:
        yield farm


@pytest.fixture
def client(farm: Farm) -> Iterator[kernelfarm.Client]:
    client = farm.client()
    yield client
    client.close()


def owner_of(cluster_map: dict[str, Any], ns: str) -> dict[str, Any]:
    """The kernel (a ``cluster.map`` row) whose slots hold namespace ``ns``."""
    slot = key_slot(ns)
    owner = next(kid for first, last, kid in cluster_map["slots"] if first <= slot <= last)
    return next(kernel for kernel in cluster_map["kernels"] if kernel["id"] == owner)


def namespace_on(cluster_map: dict[str, Any], kernel_id: int, prefix: str) -> str:
    """A namespace name, starting with ``prefix``, that kernel ``kernel_id`` owns."""
    for i in range(10_000):
        name = f"{prefix}-{i}"
        if owner_of(cluster_map, name)["id"] == kernel_id:
            return name
    raise AssertionError(f"no namespace {prefix}-* lands on kernel {kernel_id}")


def local_address(client: kernelfarm.Client, sock: Socket) -> tuple[str, int]:
    row = next(r for r in client.net.list(sock.ns) if r["sid"] == sock.sid)
    return row["local"][0], row["local"][1]


def recv_exactly(sock: Socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data), timeout=DEADLINE)
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return data


def sockets_open(client: kernelfarm.Client, ns: str) -> int:
    return int(client.net.stats(ns)["sockets_open"])


# -- 1. TCP and UDP through the farm --------------------------------------------------------

def test_tcp_echo_and_half_close(client: kernelfarm.Client, peer: EchoPeer) -> None:
    with client.net.socket("echo") as sock:
        sock.connect("127.0.0.1", peer.port, timeout=DEADLINE)
        seen = peer.connection(local_address(client, sock))
        assert sock.send(b"hello, farm") == 11
        assert recv_exactly(sock, 11) == b"hello, farm"

        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert seen.eof.wait(DEADLINE), "the peer never saw EOF after SHUT_WR"
        # Half-closed, not closed: the echo still comes back, then the peer's own EOF.
        assert recv_exactly(sock, 10) == b"last words"
        assert sock.recv(timeout=DEADLINE) == b""
        assert seen.received == 21

        stats = client.net.stats("echo")
        assert stats["connects"] == 1 and stats["bytes_out"] == 21 == stats["bytes_in"]
    assert sockets_open(client, "echo") == 0


def test_farm_listener_accepts_an_ordinary_socket(client: kernelfarm.Client) -> None:
    with client.net.socket("listener") as listener:
        host, port = listener.bind("127.0.0.1", 0)
        assert host == "127.0.0.1" and port > 0
        listener.listen(8)
        with socket.create_connection((host, port), timeout=DEADLINE) as plain:
            accepted, address = listener.accept(timeout=DEADLINE)
            with accepted:
                assert address == plain.getsockname()
                plain.sendall(b"from outside")
                assert recv_exactly(accepted, 12) == b"from outside"
                accepted.sendall(b"from the farm")
                assert plain.recv(64) == b"from the farm"
            assert plain.recv(64) == b"", "closing the accepted farm socket sends EOF"
        assert client.net.stats("listener")["accepts"] == 1


def test_udp_both_ways(client: kernelfarm.Client) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain, \
            client.net.socket("datagrams", "udp") as sock:
        plain.bind(("127.0.0.1", 0))
        plain.settimeout(DEADLINE)
        assert sock.sendto(b"ping", plain.getsockname()) == 4
        data, farm_address = plain.recvfrom(64)
        assert data == b"ping"
        assert farm_address == local_address(client, sock)

        plain.sendto(b"pong", farm_address)
        assert sock.recvfrom(timeout=DEADLINE) == (b"pong", plain.getsockname())


def test_host_errors_reach_the_client_as_their_oserror(client: kernelfarm.Client) -> None:
    """The host's own error, once: a refused connect is not mistaken for an unreachable
    kernel and retried (a second connect on that socket would report ECONNABORTED)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]  # bound, not listening: refuses
        with client.net.socket("errors") as sock:
            with pytest.raises(ConnectionRefusedError) as refused:
                sock.connect("127.0.0.1", closed_port, timeout=DEADLINE)
            assert refused.value.errno == errno.ECONNREFUSED
        assert client.net.stats("errors")["errors"] == 1

    with socket.create_server(("127.0.0.1", 0)) as taken, \
            client.net.socket("errors") as sock:
        with pytest.raises(OSError) as in_use:
            sock.bind("127.0.0.1", taken.getsockname()[1])
        assert in_use.value.errno == errno.EADDRINUSE

    with pytest.raises(OSError) as stale:
        Socket(client.call, "errors", 999, "tcp").recv(timeout=DEADLINE)
    assert stale.value.errno == errno.EBADF


# -- 2. a long stream, bounded kernel memory ---------------------------------------------------

class RssSampler(threading.Thread):
    """The peak RSS of one process, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1


def test_64_mib_stream_arrives_intact_with_bounded_kernel_memory(
        farm: Farm, client: kernelfarm.Client, peer: EchoPeer) -> None:
    """Out through the farm socket to the echo peer and back in through the same socket:
    a sender client and a receiver client on two connections, so both directions flow at
    once and the kernel is the only place the stream could pile up."""
    ns = "stream"
    kernel = psutil.Process(owner_of(farm.cluster_map(), ns)["pid"])
    payload = os.urandom(STREAM_BYTES)
    sock = client.net.socket(ns)
    sock.connect("127.0.0.1", peer.port, timeout=DEADLINE)
    sender_client = farm.client()
    sender_sock = Socket(sender_client.call, ns, sock.sid, "tcp")
    sender_error: list[BaseException] = []

    def send() -> None:
        try:
            sender_sock.sendall(payload, timeout=DEADLINE)
            sender_sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by the main thread
            sender_error.append(exc)

    baseline = kernel.memory_info().rss
    sampler = RssSampler(kernel.pid)
    sender = threading.Thread(target=send)
    sampler.start()
    sender.start()
    received = hashlib.sha256()
    total = 0
    try:
        while chunk := sock.recv(1024 * 1024, timeout=DEADLINE):
            received.update(chunk)
            total += len(chunk)
    finally:
        sender.join(DEADLINE)
        sampler.stopped.set()
        sampler.join(DEADLINE)
        sock.close()
        sender_client.close()
    assert not sender_error, sender_error
    assert total == STREAM_BYTES
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
    assert sampler.samples > 10, "the transfer ended before memory could be sampled"
    growth = sampler.peak - baseline
    assert growth < RSS_GROWTH_LIMIT, f"kernel RSS grew by {growth / 2**20:.1f} MiB"


# -- 3. policy ------------------------------------------------------------------------------

def test_destination_outside_allow_is_eacces_and_nothing_reaches_it(
        client: kernelfarm.Client) -> None:
    with socket.create_server(("127.0.0.2", 0)) as listener, \
            client.net.socket("fenced") as sock:
        with pytest.raises(PermissionError) as denied:
            sock.connect("127.0.0.2", listener.getsockname()[1], timeout=DEADLINE)
        assert denied.value.errno == errno.EACCES
        # The accept queue is FIFO: if the farm had reached the listener, its connection
        # would come out before this marker.
        with socket.create_connection(listener.getsockname(), timeout=DEADLINE) as marker:
            listener.settimeout(DEADLINE)
            first, address = listener.accept()
            first.close()
            assert address == marker.getsockname()
        # No host socket was made for the denied attempt.
        assert [row["local"] for row in client.net.list("fenced")] == [None]

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain, \
            client.net.socket("fenced", "udp") as udp:
        plain.bind(("127.0.0.2", 0))
        with pytest.raises(PermissionError) as denied:
            udp.sendto(b"leak", plain.getsockname())
        assert denied.value.errno == errno.EACCES
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker:
            marker.sendto(b"marker", plain.getsockname())
            plain.settimeout(DEADLINE)
            assert plain.recvfrom(64)[0] == b"marker"
    assert client.net.stats("fenced")["denied"] == 2


def test_socket_limit_is_emfile_per_namespace(client: kernelfarm.Client) -> None:
    held = [client.net.socket("crowded") for _ in range(MAX_SOCKETS)]
    try:
        with pytest.raises(OSError) as refused:
            client.net.socket("crowded")
        assert refused.value.errno == errno.EMFILE
        with client.net.socket("roomy"):
            pass  # the limit is per namespace
        held.pop().close()
        held.append(client.net.socket("crowded"))
        assert sockets_open(client, "crowded") == MAX_SOCKETS
    finally:
        for sock in held:
            sock.close()


# -- 4. lifetime and independence -------------------------------------------------------------

def test_dropped_client_connection_closes_its_sockets(farm: Farm, client: kernelfarm.Client,
                                                      peer: EchoPeer) -> None:
    doomed = farm.client()
    sockets = [doomed.net.socket("dropped") for _ in range(2)]
    seen = []
    for sock in sockets:
        sock.connect("127.0.0.1", peer.port, timeout=DEADLINE)
        seen.append(peer.connection(local_address(doomed, sock)))
    assert sockets_open(client, "dropped") == 2

    doomed.close()
    for connection in seen:
        assert connection.eof.wait(DEADLINE), "the peer never saw EOF"
    wait_until(lambda: sockets_open(client, "dropped") == 0, DEADLINE,
               "the kernel to forget the dropped sockets")


def test_kept_listener_outlives_its_client(farm: Farm, client: kernelfarm.Client) -> None:
    setup = farm.client()
    listener = setup.net.socket("kept")
    address = listener.bind("127.0.0.1", 0)
    listener.listen(8)
    listener.keep()
    setup.close()
    try:
        with socket.create_connection((address[0], address[1]), timeout=DEADLINE) as plain:
            later = Socket(client.call, "kept", listener.sid, "tcp")
            accepted, _ = later.accept(timeout=DEADLINE)
            with accepted:
                accepted.sendall(b"still here")
                assert plain.recv(64) == b"still here"
    finally:
        Socket(client.call, "kept", listener.sid, "tcp").close()


def test_namespaces_in_different_kernels_are_independent(two_kernels: Farm,
                                                         peer: EchoPeer) -> None:
    farm = two_kernels
    cmap = farm.cluster_map()
    ns_a, ns_b = namespace_on(cmap, 0, "tenant-a"), namespace_on(cmap, 1, "tenant-b")
    client_a, client_b, observer = farm.client(), farm.client(), farm.client()

    sock_a = client_a.net.socket(ns_a)
    sock_a.connect("127.0.0.1", peer.port, timeout=DEADLINE)
    sock_a.sendall(b"a" * 100)
    assert recv_exactly(sock_a, 100) == b"a" * 100
    seen_a = peer.connection(local_address(client_a, sock_a))
    with client_b.net.socket(ns_b) as sock_b:
        sock_b.connect("127.0.0.1", peer.port, timeout=DEADLINE)
        seen_b = peer.connection(local_address(client_b, sock_b))
        with pytest.raises(OSError) as info:   # a sid means nothing in another namespace
            client_b.call("net.send", ns_b, sock_a.sid, b"x")
        assert info.value.errno == errno.EBADF

        stats_a, stats_b = observer.net.stats(ns_a), observer.net.stats(ns_b)
        assert (stats_a["sockets_open"], stats_a["bytes_out"]) == (1, 100)
        assert (stats_b["sockets_open"], stats_b["bytes_out"]) == (1, 0)
        assert [row["local"] for row in observer.net.list(ns_b)] == \
            [list(local_address(client_b, sock_b))]

        client_a.close()
        assert seen_a.eof.wait(DEADLINE)
        wait_until(lambda: sockets_open(observer, ns_a) == 0, DEADLINE, "A's socket to close")
        # B, in the other kernel, noticed nothing.
        assert not seen_b.eof.is_set()
        sock_b.sendall(b"b" * 10)
        assert recv_exactly(sock_b, 10) == b"b" * 10
        assert sockets_open(observer, ns_b) == 1
    observer.close()
    client_b.close()


# -- 5. status --------------------------------------------------------------------------------

def kernel_sockets(status: dict[str, Any]) -> dict[int, int]:
    return {row["id"]: row["stats"]["subsystems"]["net"]["sockets"]
            for row in status["kernels"]}


def test_status_json_shows_open_sockets_in_the_owning_kernel(two_kernels: Farm) -> None:
    farm = two_kernels
    client = farm.client()
    cmap = farm.cluster_map()
    ns = namespace_on(cmap, 1, "watched")
    before = kernel_sockets(client.status())
    held = [client.net.socket(ns) for _ in range(3)]
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "kernelfarm", "status", "--json",
             "--control", farm.control_str],
            capture_output=True, timeout=DEADLINE * 3, check=True)
        after = kernel_sockets(json.loads(listed.stdout))
    finally:
        for sock in held:
            sock.close()
    assert after == {0: before[0], 1: before[1] + 3}


# -- 6. the asyncio client ------------------------------------------------------------------

@pytest.mark.asyncio
async def test_asyncio_client_tcp_echo(farm: Farm, peer: EchoPeer) -> None:
    async with kernelfarm.aio.Client(farm.control) as client:
        async with await client.net.socket("async-echo") as sock:
            await sock.connect("127.0.0.1", peer.port, timeout=DEADLINE)
            await sock.sendall(b"over asyncio")
            data = b""
            while len(data) < 12:
                chunk = await sock.recv(64, timeout=DEADLINE)
                assert chunk
                data += chunk
            assert data == b"over asyncio"
        assert (await client.net.stats("async-echo"))["sockets_open"] == 0

        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            async with await client.net.socket("async-echo") as sock:
                with pytest.raises(ConnectionRefusedError):
                    await sock.connect("127.0.0.1", closed.getsockname()[1], timeout=DEADLINE)
