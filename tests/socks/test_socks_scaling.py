"""Relays move with their namespace: a download survives ``kernelfarm scale 1 -> 2 -> 1``.

The server is held in the middle of the body until both scale operations are done, so the
one TCP connection spans both moves for certain; curl reads slowly (``--limit-rate``), so
the relay is mostly holding bytes when it is parked and handed over.  The server counts
its connections: exactly one means nothing reconnected behind curl's back.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from farmctl import ADMIN_TOKEN, moving_namespace, start_farm, wait_until
from socks_harness import socks_proxy

DEADLINE = 60.0
HALF = 8 * 2**20


class HeldDownload:
    """An HTTP/1.0 server thread: sends the first half of ``body``, then waits for
    ``release`` before it sends the rest."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.release = threading.Event()
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.connections += 1
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.body))
            conn.sendall(self.body[:HALF])
            self.release.wait(DEADLINE)
            conn.sendall(self.body[HALF:])

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        self.thread.join(DEADLINE)


def relay_rows(client: Any, ns: str) -> list[dict[str, Any]]:
    return [row for row in client.net.list(ns) if row.get("relay")]


def test_a_download_survives_scale_1_2_1(tmp_path: Path) -> None:
    body = os.urandom(2 * HALF)
    peer = HeldDownload(body)
    out = tmp_path / "download.bin"
    ns = moving_namespace()
    with start_farm(tmp_path, 1) as farm, \
            socks_proxy(farm, tmp_path / "socks.log") as proxy:
        client = farm.client()
        curl = subprocess.Popen(
            ["curl", "-sS", "--max-time", str(DEADLINE), "--limit-rate", "8M",
             "--socks5", f"{proxy[0]}:{proxy[1]}", "-U", f"{ns}:{ADMIN_TOKEN}",
             "-o", str(out), f"http://127.0.0.1:{peer.port}/file"],
            stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
        try:
            wait_until(lambda: out.exists() and out.stat().st_size > 0, DEADLINE,
                       "the download to start")
            before = relay_rows(client, ns)
            assert len(before) == 1
            client.scale(2)
            assert farm.cluster_map()["kernels"][1]["handoff"]
            # net.list is now answered by kernel 1, which resumes the relay on its own
            # time: the hand-off packet and this call come on different sockets.
            wait_until(lambda: [r["peer"] for r in relay_rows(client, ns)] ==
                       [before[0]["peer"]], DEADLINE, "the relay on kernel 1")
            client.scale(1)
            wait_until(lambda: [r["peer"] for r in relay_rows(client, ns)] ==
                       [before[0]["peer"]], DEADLINE, "the relay back on kernel 0")
            assert out.stat().st_size < len(body)  # still going when the moves were done
            peer.release.set()
            _, stderr = curl.communicate(timeout=DEADLINE)
            assert curl.returncode == 0, stderr
        finally:
            if curl.poll() is None:
                curl.kill()
                curl.wait()
            peer.close()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()
    assert peer.connections == 1


def test_bytes_held_by_a_parked_relay_travel_with_it(tmp_path: Path) -> None:
    """The client reads nothing while the farm scales 1 -> 2 -> 1, so the relay holds a
    chunk it could not deliver each time it is parked: that chunk must arrive once, in
    order, after the moves."""
    body = os.urandom(2 * HALF)
    peer = HeldDownload(body)
    ns = moving_namespace()
    with start_farm(tmp_path, 1) as farm, \
            socks_proxy(farm, tmp_path / "socks.log") as proxy:
        client = farm.client()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(DEADLINE)
        try:
            sock.connect(proxy)
            sock.sendall(b"\x05\x01\x02")
            assert sock.recv(2) == b"\x05\x02"
            sock.sendall(bytes([1, len(ns)]) + ns.encode() + bytes([len(ADMIN_TOKEN)])
                         + ADMIN_TOKEN.encode())
            assert sock.recv(2) == b"\x01\x00"
            sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                         + peer.port.to_bytes(2, "big") + b"GET / HTTP/1.0\r\n\r\n")
            assert sock.recv(10, socket.MSG_WAITALL)[:2] == b"\x05\x00"

            def held() -> int:
                rows = relay_rows(client, ns)
                return rows[0]["pending"] if rows else 0

            for kernels in (2, 1):
                wait_until(held, DEADLINE, "the relay to hold undelivered bytes")
                client.scale(kernels)
            wait_until(held, DEADLINE, "the relay to hold bytes back on kernel 0")
            peer.release.set()
            received = bytearray()
            while chunk := sock.recv(1 << 20):
                received += chunk
        finally:
            sock.close()
            peer.close()
    header, _, data = bytes(received).partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.0 200")
    assert len(data) == len(body) and hashlib.sha256(data).digest() == \
        hashlib.sha256(body).digest()
    assert peer.connections == 1


def test_the_proxy_serves_again_after_its_kernel_is_killed(tmp_path: Path) -> None:
    """The hand-off socket belongs to the supervisor: a restarted kernel serves it, and the
    proxy's connection to the dead kernel is replaced on the next request."""
    from python_socks.sync import Proxy

    server = socket.create_server(("127.0.0.1", 0))
    with start_farm(tmp_path, 1) as farm, \
            socks_proxy(farm, tmp_path / "socks.log") as proxy, server:
        via = Proxy.from_url(f"socks5://restart:{ADMIN_TOKEN}@{proxy[0]}:{proxy[1]}")
        port = server.getsockname()[1]
        via.connect("127.0.0.1", port, timeout=DEADLINE).close()
        server.accept()[0].close()
        old = farm.kernel_pids()[0]
        os.kill(old, 9)
        wait_until(lambda: farm.cluster_map()["kernels"][0]["state"] == "running"
                   and farm.kernel_pids()[0] != old, DEADLINE, "the kernel to restart")
        with via.connect("127.0.0.1", port, timeout=DEADLINE) as sock:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"after the restart")
                assert sock.recv(17, socket.MSG_WAITALL) == b"after the restart"
