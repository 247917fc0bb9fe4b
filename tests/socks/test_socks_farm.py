"""``kernelfarm socks`` through a real farm, with real SOCKS clients: curl, python-socks, git.

One farm (two kernels), one proxy and one ``python -m http.server`` serve the module.  The
farm's policy allows 127.0.0.1 only and at most ``MAX_SOCKETS`` sockets per namespace, so
the policy and limit tests need no farm of their own; every test uses its own namespace.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
from python_socks import ProxyError
from python_socks.sync import Proxy

import kernelfarm
from farmctl import ADMIN_TOKEN, Farm, start_farm, wait_until
from kernelfarm.partition import key_slot
from socks_harness import http_server, random_file, socks_proxy

MAX_SOCKETS = 3
FARM_CONFIG = f'[net]\nallow = ["127.0.0.1/32"]\nmax_sockets = {MAX_SOCKETS}\n'
BIG = 64 * 2**20
DEADLINE = 30.0
TOKEN = ADMIN_TOKEN  # the SOCKS password is a tenant token


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A directory for http.server with a 64 MiB random file; the file's sha256."""
    directory = tmp_path_factory.mktemp("site")
    return directory, random_file(directory / "big.bin", BIG)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with start_farm(tmp_path_factory.mktemp("socks"), 2, config_text=FARM_CONFIG) as farm:
        yield farm


@pytest.fixture(scope="module")
def proxy(farm: Farm) -> Iterator[tuple[str, int]]:
    with socks_proxy(farm, farm.data_dir.parent / "socks.log") as address:
        yield address


@pytest.fixture(scope="module")
def web(site: tuple[Path, str]) -> Iterator[int]:
    with http_server(site[0]) as port:
        yield port


@pytest.fixture(scope="module")
def client(farm: Farm) -> kernelfarm.Client:
    return farm.client()


def curl(proxy: tuple[str, int], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", str(DEADLINE), *args],
                          capture_output=True, timeout=DEADLINE + 5, env={"PATH": "/usr/bin:/bin"})


def via(proxy: tuple[str, int], ns: str) -> Proxy:
    return Proxy.from_url(f"socks5://{ns}:{TOKEN}@{proxy[0]}:{proxy[1]}")


def relays_gone(client: kernelfarm.Client, ns: str) -> bool:
    return bool(client.net.stats(ns)["sockets_open"] == 0)


# -- curl: the 64 MiB fetch, both ways of naming the host ---------------------------------

@pytest.mark.parametrize("flag,host", [("--socks5", "127.0.0.1"),
                                       ("--socks5-hostname", "localhost")])
def test_curl_fetches_64_mib_with_the_right_sha256(
        proxy: tuple[str, int], web: int, site: tuple[Path, str],
        client: kernelfarm.Client, flag: str, host: str) -> None:
    ns = f"curl{flag}"
    result = curl(proxy, flag, f"{proxy[0]}:{proxy[1]}", "-U", f"{ns}:{TOKEN}",
                  f"http://{host}:{web}/big.bin")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == site[1]
    wait_until(lambda: relays_gone(client, ns), DEADLINE, "the relay to close")
    stats = client.net.stats(ns)
    assert stats["connects"] == 1 and stats["bytes_in"] > BIG and stats["bytes_out"] > 0


def test_policy_denial_reaches_curl_as_reply_2(proxy: tuple[str, int], web: int,
                                               client: kernelfarm.Client) -> None:
    result = curl(proxy, "--socks5", f"{proxy[0]}:{proxy[1]}", "-U", f"denied:{TOKEN}",
                  f"http://127.0.0.2:{web}/big.bin")
    assert result.returncode == 97, result
    assert b"(2)" in result.stderr  # curl names the SOCKS reply code
    assert client.net.stats("denied")["denied"] == 1


def test_refused_connection_reaches_curl_as_reply_5(proxy: tuple[str, int]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: refused
        result = curl(proxy, "--socks5", f"{proxy[0]}:{proxy[1]}", "-U", f"refused:{TOKEN}",
                      f"http://127.0.0.1:{port}/")
    assert result.returncode == 97 and b"(5)" in result.stderr, result


def test_a_client_without_credentials_is_refused(proxy: tuple[str, int], web: int) -> None:
    result = curl(proxy, "--socks5", f"{proxy[0]}:{proxy[1]}", f"http://127.0.0.1:{web}/")
    assert result.returncode == 97, result


# -- other programs -----------------------------------------------------------------------

def test_python_socks_fetches_through_the_farm(proxy: tuple[str, int], web: int,
                                               site: tuple[Path, str]) -> None:
    (site[0] / "hello.txt").write_bytes(b"hello through a namespace\n")
    sock = via(proxy, "pysocks").connect("127.0.0.1", web, timeout=DEADLINE)
    with sock:
        sock.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        reply = receive_all(sock)
    assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"hello through a namespace\n")


def test_git_clones_through_the_farm(proxy: tuple[str, int], web: int,
                                     site: tuple[Path, str], tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}

    def git(*args: str, cwd: Path = tmp_path) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                       env=env, check=True, capture_output=True, timeout=DEADLINE)

    git("init", "-q", "src")
    (tmp_path / "src" / "README").write_text("cloned through kernelfarm socks\n")
    git("add", "README", cwd=tmp_path / "src")
    git("commit", "-q", "-m", "first", cwd=tmp_path / "src")
    git("clone", "-q", "--bare", "src", str(site[0] / "repo.git"))
    git("update-server-info", cwd=site[0] / "repo.git")  # the dumb HTTP protocol
    git("-c", f"http.proxy=socks5://gitns:{TOKEN}@{proxy[0]}:{proxy[1]}", "clone", "-q",
        f"http://127.0.0.1:{web}/repo.git", "dst")
    assert (tmp_path / "dst" / "README").read_text() == "cloned through kernelfarm socks\n"


# -- relays are sockets of their namespace ------------------------------------------------

class EchoPeer:
    """Echo server thread: echoes until EOF, then half-closes back."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoPeer]:
    peer = EchoPeer()
    yield peer
    peer.close()


def receive_all(sock: socket.socket) -> bytes:
    sock.settimeout(DEADLINE)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_half_close_travels_both_ways(proxy: tuple[str, int], echo: EchoPeer) -> None:
    with via(proxy, "halfclose").connect("127.0.0.1", echo.port, timeout=DEADLINE) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert receive_all(sock) == b"last words"


def test_relays_count_against_max_sockets_and_show_in_net_list(
        proxy: tuple[str, int], echo: EchoPeer, client: kernelfarm.Client) -> None:
    ns = "limited"
    held = [via(proxy, ns).connect("127.0.0.1", echo.port, timeout=DEADLINE)
            for _ in range(MAX_SOCKETS)]
    try:
        rows = client.net.list(ns)
        assert len(rows) == MAX_SOCKETS and all(row["relay"] for row in rows)
        assert {row["peer"][1] for row in rows} == {echo.port}
        with pytest.raises(ProxyError) as refused:
            via(proxy, ns).connect("127.0.0.1", echo.port, timeout=DEADLINE)
        assert refused.value.error_code == 1  # EMFILE: general failure
        status = client.status()
        assert sum(k["stats"]["subsystems"]["net"]["relays"] for k in status["kernels"]) \
            >= MAX_SOCKETS
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: relays_gone(client, ns), DEADLINE, "the relays to close")


def test_a_reader_that_stops_holds_the_sender_back(proxy: tuple[str, int],
                                                   client: kernelfarm.Client,
                                                   farm: Farm) -> None:
    """Backpressure: the relay holds at most one chunk while the sender is blocked, and
    the kernel's memory does not grow with what the sender wanted to send."""
    total = 256 * 2**20
    sent = [0]
    server = socket.create_server(("127.0.0.1", 0))

    def push() -> None:
        conn, _ = server.accept()
        with conn:
            block = b"x" * (1 << 20)
            try:
                while sent[0] < total:
                    sent[0] += conn.send(block)
            except OSError:
                pass

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    kernels = {p.pid: p.memory_info().rss for p in farm.kernel_procs()}
    sock = via(proxy, "slowreader").connect("127.0.0.1", server.getsockname()[1],
                                            timeout=DEADLINE)
    try:
        wait_until(lambda: sent[0] > 0 and quiet_for(sent), DEADLINE, "the sender to block")
        assert sent[0] < 64 * 2**20, "the kernel took far more than socket buffers hold"
        row, = client.net.list("slowreader")
        assert row["pending"] <= 64 * 1024
        for proc in farm.kernel_procs():
            grown = proc.memory_info().rss - kernels.get(proc.pid, 0)
            assert grown < 32 * 2**20, f"kernel {proc.pid} grew by {grown} bytes"
        received = 0
        sock.settimeout(DEADLINE)
        while received < total:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == total
    finally:
        sock.close()
        server.close()
        pusher.join(DEADLINE)


def quiet_for(counter: list[int], seconds: float = 0.3) -> bool:
    """The counter does not move for ``seconds`` (the sender is blocked in send)."""
    before = counter[0]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if counter[0] != before:
            return False
        time.sleep(0.01)
    return True


# -- the raw protocol ---------------------------------------------------------------------

def raw_session(proxy: tuple[str, int], ns: str) -> socket.socket:
    """A connected client past the username/password step."""
    sock = socket.create_connection(proxy, timeout=DEADLINE)
    sock.sendall(b"\x05\x01\x02")
    assert sock.recv(2) == b"\x05\x02"
    user, password = ns.encode(), TOKEN.encode()
    sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
    assert sock.recv(2) == b"\x01\x00"
    return sock


def test_bytes_sent_with_the_request_are_not_lost(proxy: tuple[str, int],
                                                  echo: EchoPeer) -> None:
    with raw_session(proxy, "early") as sock:
        request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + \
            struct.pack("!H", echo.port)
        sock.sendall(request + b"early bytes")
        assert sock.recv(10, socket.MSG_WAITALL)[:2] == b"\x05\x00"
        sock.shutdown(socket.SHUT_WR)
        assert receive_all(sock) == b"early bytes"


def test_a_connect_reply_names_the_outgoing_connections_address(
        proxy: tuple[str, int], echo: EchoPeer, client: kernelfarm.Client) -> None:
    """BND.ADDR and BND.PORT of a CONNECT's reply are where the relay connects from."""
    with raw_session(proxy, "bound") as sock:
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") +
                     struct.pack("!H", echo.port))
        answer = sock.recv(10, socket.MSG_WAITALL)
        assert answer[:4] == b"\x05\x00\x00\x01"
        bound = [socket.inet_ntoa(answer[4:8]), struct.unpack("!H", answer[8:10])[0]]
        assert bound[1] != 0
        assert [row["local"] for row in client.net.list("bound") if row.get("relay")] \
            == [bound]


def test_the_kernel_completes_a_reply_with_an_ipv6_local_address() -> None:
    from kernelfarm.net.handoff_fields import first_to_write
    from kernelfarm.socks.protocol import Reply, reply, reply_prefixes

    with socket.create_server(("::1", 0), family=socket.AF_INET6) as server, \
            socket.create_connection(server.getsockname()[:2], timeout=DEADLINE) as sock:
        server.accept()[0].close()
        host, port = sock.getsockname()[:2]
        assert first_to_write(reply_prefixes(Reply.SUCCEEDED), sock) == \
            reply(Reply.SUCCEEDED, host, port)
        assert first_to_write(b"as is", sock) == b"as is"


def test_bind_sends_two_replies_and_relays_the_connection_it_took(
        proxy: tuple[str, int], client: kernelfarm.Client) -> None:
    """RFC 1928 section 4: the first reply names where the namespace listens, the second
    the peer that connected (only from the host the client named); then bytes flow."""
    with raw_session(proxy, "binder") as sock:
        sock.sendall(b"\x05\x02\x00\x01" + socket.inet_aton("127.0.0.1") +
                     struct.pack("!H", 0) + b"sent early")
        first = sock.recv(10, socket.MSG_WAITALL)
        assert first[:4] == b"\x05\x00\x00\x01"
        listening = (socket.inet_ntoa(first[4:8]), struct.unpack("!H", first[8:10])[0])
        assert listening[0] == "127.0.0.1" and listening[1] != 0
        assert [row["listening"] for row in client.net.list("binder")] == [True]
        stranger = socket.create_connection(listening, timeout=DEADLINE,
                                            source_address=("127.0.0.2", 0))
        with stranger:  # not from DST.ADDR: closed, and the wait goes on
            assert stranger.recv(1) == b""
        with socket.create_connection(listening, timeout=DEADLINE,
                                      source_address=("127.0.0.1", 0)) as peer:
            second = sock.recv(10, socket.MSG_WAITALL)
            assert second[:4] == b"\x05\x00\x00\x01"
            assert (socket.inet_ntoa(second[4:8]), struct.unpack("!H", second[8:10])[0]) \
                == peer.getsockname()
            assert peer.recv(10, socket.MSG_WAITALL) == b"sent early"
            peer.sendall(b"from the peer")
            assert sock.recv(13, socket.MSG_WAITALL) == b"from the peer"
            sock.sendall(b"to the peer")
            assert peer.recv(11, socket.MSG_WAITALL) == b"to the peer"
            assert [row.get("relay") for row in client.net.list("binder")] == [True]


@pytest.mark.parametrize("request_bytes,code", [
    (b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50", 7),   # command 9: not supported
    (b"\x05\x01\x00\x09\x7f\x00\x00\x01\x00\x50", 8),   # address type 9
])
def test_unsupported_requests_get_their_reply_codes(proxy: tuple[str, int],
                                                    request_bytes: bytes, code: int) -> None:
    with raw_session(proxy, "raw") as sock:
        sock.sendall(request_bytes)
        assert sock.recv(2) == bytes([5, code])


def test_only_a_kernel_of_the_farm_may_hand_relays_over(farm: Farm) -> None:
    """A stranger on the hand-off socket cannot plant connections in a namespace."""
    from kernelfarm import handoff

    path = farm.cluster_map()["kernels"][0]["handoff"]
    ours, theirs = socket.socketpair()
    up_ours, up_theirs = socket.socketpair()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn, ours, up_ours:
        conn.connect(path)
        message: dict[str, Any] = {"op": "adopt", "ns": "planted", "relay": {
            "sid": 1, "to_upstream": b"", "to_client": b"", "upstream_ended": False,
            "client_ended": False}}
        socket.send_fds(conn, [handoff.pack(message)], [theirs.fileno(), up_theirs.fileno()])
        theirs.close()
        up_theirs.close()
        ours.settimeout(DEADLINE)
        assert ours.recv(1) == b"", "the kernel kept a connection a stranger handed over"
    assert psutil.pid_exists(farm.proc.pid)


# -- UDP ASSOCIATE ------------------------------------------------------------------------

def test_udp_associate_sends_and_receives_from_the_namespace(
        proxy: tuple[str, int], client: kernelfarm.Client) -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(DEADLINE)

    def reflect() -> None:
        try:
            data, source = echo.recvfrom(65535)
            echo.sendto(data.upper(), source)
        except OSError:
            pass

    reflector = threading.Thread(target=reflect, daemon=True)
    reflector.start()
    mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mine.bind(("127.0.0.1", 0))
    mine.settimeout(DEADLINE)
    try:
        with raw_session(proxy, "udpns") as control:
            control.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1")
                            + struct.pack("!H", mine.getsockname()[1]))
            answer = control.recv(10, socket.MSG_WAITALL)
            assert answer[:2] == b"\x05\x00"
            relay = (socket.inet_ntoa(answer[4:8]), struct.unpack("!H", answer[8:10])[0])
            header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1")
            mine.sendto(header + struct.pack("!H", echo.getsockname()[1]) + b"ping", relay)
            data, source = mine.recvfrom(65535)
            assert source == relay
            assert data == header + struct.pack("!H", echo.getsockname()[1]) + b"PING"
            stats = client.net.stats("udpns")
            assert stats["bytes_out"] == 4 and stats["bytes_in"] == 4
            assert stats["sockets_open"] == 1
        wait_until(lambda: relays_gone(client, "udpns"), DEADLINE,
                   "the association's socket to close with its TCP connection")
    finally:
        mine.close()
        echo.close()
        reflector.join(DEADLINE)


# -- the hand-off socket against bad input --------------------------------------------------

def test_the_hand_off_socket_answers_bad_packets_and_keeps_serving(farm: Farm) -> None:
    from kernelfarm import handoff

    cluster_map = farm.cluster_map()
    kernel = cluster_map["kernels"][0]
    owned = next(f"ns-{i}" for i in range(1000) if owner_id(cluster_map, f"ns-{i}") == 0)
    elsewhere = next(f"ns-{i}" for i in range(1000) if owner_id(cluster_map, f"ns-{i}") != 0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(DEADLINE)
        conn.connect(kernel["handoff"])

        def ask(packet: bytes, fds: list[int] | None = None) -> dict[str, Any]:
            socket.send_fds(conn, [packet], fds or [])
            return handoff.unpack(conn.recv(handoff.MAX_PACKET))

        assert ask(b"\xc1 not msgpack")["error"]["code"] == "EINVAL"
        assert ask(handoff.pack({"op": "nope", "id": 1}))["error"]["code"] == "EINVAL"
        reply = ask(handoff.pack({"op": "relay", "id": 2, "ns": owned}))
        assert reply["id"] == 2 and "descriptors" in reply["error"]["message"]
        with open(os.devnull) as stray:  # a descriptor where none belongs is closed, not kept
            reply = ask(handoff.pack({"op": "check", "id": 3, "ns": owned}), [stray.fileno()])
        assert reply["error"]["code"] == "EINVAL"
        assert ask(handoff.pack({"op": "check", "id": 4, "ns": elsewhere}))["error"]["code"] \
            == "MOVED"
        assert ask(handoff.pack({"op": "check", "id": 5, "ns": owned, "token": "guess"})
                   )["error"]["code"] == "EACCES"
        assert ask(handoff.pack({"op": "check", "id": 6, "ns": owned,
                                 "token": ADMIN_TOKEN}))["error"] is None
    assert farm.client().call_kernel(tuple(kernel["addr"]), "kernel.ping")["kernel"] == 0


def test_failed_token_checks_are_bounded_per_process(farm: Farm) -> None:
    """A peer process gets FAILURE_BURST wrong tokens, then EAGAIN without its token being
    looked at (even the right one), on every connection it has, until its budget refills.
    Kernel 1: the other tests' own hand-off connections go to kernel 0."""
    from kernelfarm import handoff
    from kernelfarm.net.handoff_budget import FAILURE_BURST

    cluster_map = farm.cluster_map()
    path = cluster_map["kernels"][1]["handoff"]
    ns = next(f"ns-{i}" for i in range(1000) if owner_id(cluster_map, f"ns-{i}") == 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as first, \
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as second:
        for conn in (first, second):
            conn.settimeout(DEADLINE)
            conn.connect(path)

        def check(conn: socket.socket, msgid: int, token: str) -> None:
            conn.send(handoff.pack({"op": "check", "id": msgid, "ns": ns, "token": token}))

        def code(conn: socket.socket) -> str | None:
            error = handoff.unpack(conn.recv(handoff.MAX_PACKET))["error"]
            return None if error is None else str(error["code"])

        guesses = FAILURE_BURST + 5  # all sent at once: the kernel answers them in a burst
        for msgid in range(guesses):
            check(first, msgid, f"guess-{msgid}")
        check(second, guesses, ADMIN_TOKEN)
        codes = [code(first) for _ in range(guesses)]
        refused = codes.count("EACCES")
        assert FAILURE_BURST <= refused <= FAILURE_BURST + 1, codes
        assert codes == ["EACCES"] * refused + ["EAGAIN"] * (guesses - refused)
        assert code(second) == "EAGAIN"  # the right token, not looked at

        def admitted() -> bool:
            check(second, 0, ADMIN_TOKEN)
            return code(second) is None

        wait_until(admitted, DEADLINE, "the budget to refill")


def owner_id(cluster_map: dict[str, Any], ns: str) -> int:
    slot = key_slot(ns)
    kid: int = next(k for first, last, k in cluster_map["slots"] if first <= slot <= last)
    return kid


# -- tenants: the password is a tenant token, checked by the kernel -----------------------

def test_a_wrong_password_is_refused_at_the_handshake(proxy: tuple[str, int], web: int) -> None:
    result = curl(proxy, "--socks5", f"{proxy[0]}:{proxy[1]}", "-U", "wrongpw:not-a-token",
                  f"http://127.0.0.1:{web}/")
    assert result.returncode == 97, result


@pytest.mark.parametrize("auth", [b"\x01\x02\xff\xfe\x03tok",  # a username not UTF-8
                                  b"\x02\x01a\x01b"])  # an unknown auth version
def test_a_login_it_cannot_read_gets_the_failure_status(proxy: tuple[str, int],
                                                        auth: bytes) -> None:
    """RFC 1929: a failure status, then the close (it closed without a word)."""
    with socket.create_connection(proxy, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert sock.recv(2) == b"\x05\x02"
        sock.sendall(auth)
        assert sock.recv(2) == b"\x01\x01"
        assert sock.recv(1) == b""


def test_a_tenant_reaches_its_own_namespaces_only(proxy: tuple[str, int], echo: EchoPeer,
                                                  client: kernelfarm.Client) -> None:
    token = client.control_call("tenant.add", "sockstenant", [], ["bob-*"])["token"]

    def as_bob(ns: str) -> Proxy:
        return Proxy.from_url(f"socks5://{ns}:{token}@{proxy[0]}:{proxy[1]}")

    with as_bob("bob-1").connect("127.0.0.1", echo.port, timeout=DEADLINE) as sock:
        sock.sendall(b"mine")
        sock.shutdown(socket.SHUT_WR)
        assert receive_all(sock) == b"mine"
    with pytest.raises(ProxyError):
        as_bob("alice-1").connect("127.0.0.1", echo.port, timeout=DEADLINE)
