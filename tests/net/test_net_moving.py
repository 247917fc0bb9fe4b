"""Sockets made over RPC move with their namespace: ``kernelfarm scale 1 -> 2 -> 1``.

A real farm of one kernel, a namespace whose slot goes to the new kernel and back, and a
client holding three sockets of it: one streaming numbered chunks through the echo peer
while the farm scales (its requests are in flight when the socket moves), one connected
to a plain peer that sent bytes the client reads only after both moves, and a listening
socket with a connection waiting in its backlog.  Everything must arrive once, in order,
on the same socket ids.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from farmctl import moving_namespace, start_farm, wait_until
from kernelfarm.partition import key_slot

DEADLINE = 30.0
CHUNK = 4096


def owner_of(farm: Any, ns: str) -> int:
    slot = key_slot(ns)
    return next(k for first, last, k in farm.cluster_map()["slots"] if first <= slot <= last)


class Streamer:
    """A thread that sends numbered chunks through the echo peer and reads each back
    before the next, until told to stop; what it got back is ``received``."""

    def __init__(self, client: Any, ns: str, echo_port: int) -> None:
        self.sock = client.net.socket(ns, "tcp")
        self.sock.connect("127.0.0.1", echo_port)
        self.sent = bytearray()
        self.received = bytearray()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            number = 0
            while not self.stop.is_set():
                chunk = (b"%08d" % number) * (CHUNK // 8)
                self.sock.sendall(chunk)
                self.sent += chunk
                while len(self.received) < len(self.sent):
                    self.received += self.sock.recv(CHUNK, timeout=DEADLINE)
                number += 1
        except BaseException as exc:
            self.error = exc

    def progress(self) -> int:
        """Bytes echoed back so far; the stream's error, if it failed."""
        if self.error is not None:
            raise self.error
        return len(self.received)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def test_rpc_sockets_move_with_their_namespace_through_scale_1_2_1(
        tmp_path: Path, echo_port: int) -> None:
    ns = moving_namespace("sockets")
    with start_farm(tmp_path, 1) as farm, \
            socket.create_server(("127.0.0.1", 0)) as plain_server:
        client = farm.client()
        quiet = client.net.socket(ns, "tcp")
        quiet.connect(*plain_server.getsockname())
        peer, _ = plain_server.accept()
        listener = client.net.socket(ns, "tcp")
        address = listener.bind("127.0.0.1", 0)
        listener.listen(8)
        streamer = Streamer(farm.client(), ns, echo_port)
        with peer, socket.create_connection(address, timeout=DEADLINE) as waiting:
            peer.sendall(b"sent before the moves, read after them")
            wait_until(lambda: streamer.progress() >= 16 * CHUNK, DEADLINE,
                       "the stream to flow")
            for kernels, owner in ((2, 1), (1, 0)):
                before = streamer.progress()
                client.scale(kernels)
                assert owner_of(farm, ns) == owner
                wait_until(lambda: streamer.progress() >= before + 16 * CHUNK,
                           DEADLINE, f"the stream to flow on kernel {owner}")
            streamer.finish()
            assert bytes(streamer.received) == bytes(streamer.sent)  # once, in order

            assert quiet.recv(100, timeout=DEADLINE) == \
                b"sent before the moves, read after them"
            quiet.sendall(b"and back")
            peer.settimeout(DEADLINE)
            assert peer.recv(100) == b"and back"

            accepted, _ = listener.accept(timeout=DEADLINE)
            waiting.sendall(b"queued in the backlog")
            assert accepted.recv(100, timeout=DEADLINE) == b"queued in the backlog"
            rows = {row["sid"]: row for row in client.net.list(ns)}
            assert rows[listener.sid]["listening"]
            assert {quiet.sid, listener.sid, streamer.sock.sid, accepted.sid} <= set(rows)
