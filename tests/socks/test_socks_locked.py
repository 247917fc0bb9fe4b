"""``kernelfarm socks`` against the locked baseline (``--mode locked --threads 2``).

The locked kernel serves hand-offs on its main thread while a namespace's sockets live on
the loop of the thread that first served it: relays must run there, under the
namespace's lock, beside the namespace's sockets made over RPC.  Several clients make
sockets first, so their namespaces' homes spread over both threads.
"""

from __future__ import annotations

import socket
from pathlib import Path

from python_socks.sync import Proxy

from farmctl import ADMIN_TOKEN, start_farm
from socks_harness import socks_proxy

DEADLINE = 30.0
NAMESPACES = 4


def test_socks_relays_through_a_locked_mode_farm(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1, "--mode", "locked", "--threads", "2") as farm, \
            socks_proxy(farm, tmp_path / "socks.log") as proxy, \
            socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(DEADLINE)
        port = server.getsockname()[1]
        names = [f"locked-{i}" for i in range(NAMESPACES)] + ["locked-handoff-first"]
        held = []
        for name in names[:NAMESPACES]:  # one client each: its thread becomes the home
            own = farm.client().net.socket(name, "tcp")
            own.connect("127.0.0.1", port)
            held.append((own, server.accept()[0]))
        for name in names:
            via = Proxy.from_url(f"socks5://{name}:{ADMIN_TOKEN}@{proxy[0]}:{proxy[1]}")
            with via.connect("127.0.0.1", port, timeout=DEADLINE) as sock:
                conn, _ = server.accept()
                with conn:
                    sock.sendall(name.encode())
                    assert conn.recv(100) == name.encode()
                    conn.sendall(b"back to " + name.encode())
                    assert sock.recv(100) == b"back to " + name.encode()
                    rows = farm.client().net.list(name)
                    assert [row["relay"] for row in rows if row.get("relay")] == [True]
                    assert farm.client().net.stats(name)["bytes_out"] >= len(name)
        for own, peer in held:  # the namespaces' own sockets still serve beside the relays
            with peer:
                own.sendall(b"still mine")
                peer.settimeout(DEADLINE)
                assert peer.recv(100) == b"still mine"
