"""Sockets made over RPC move with their namespace: ``kernelfarm scale 1 -> 2 -> 1``.

A real farm of one kernel, a namespace whose slot goes to the new kernel and back, and a
client holding three sockets of it: one streaming numbered chunks through the echo peer
while the farm scales (its requests are in flight when the socket moves), one connected
to a plain peer that sent bytes the client reads only after both moves, and a listening
socket with a connection waiting in its backlog.  Everything must arrive once, in order,
on the same socket ids.  And a move that fails after the sockets went and is rolled
back brings them back to the kernel that keeps the namespace.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from farmctl import moving_namespace, start_farm, wait_until
from kernelfarm.errors import KernelfarmError
from kernelfarm.partition import key_slot

DEADLINE = 30.0
CHUNK = 4096


def owner_of(farm: Any, ns: str) -> int:
    slot = key_slot(ns)
    return int(next(k for first, last, k in farm.cluster_map()["slots"]
                    if first <= slot <= last))


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


class Held:
    """Sockets of namespace ``ns`` that wait through a move: ``quiet``, connected to a
    plain peer (``peer``, the host end) that sends bytes the test reads only after the
    move, and ``listener``, listening at ``address`` with a connection (``waiting``) in its
    backlog."""

    def __init__(self, client: Any, ns: str, plain_server: socket.socket) -> None:
        self.quiet = client.net.socket(ns, "tcp")
        self.quiet.connect(*plain_server.getsockname())
        self.peer, _ = plain_server.accept()
        self.listener = client.net.socket(ns, "tcp")
        self.address = self.listener.bind("127.0.0.1", 0)
        self.listener.listen(8)
        self.waiting = socket.create_connection(self.address, timeout=DEADLINE)
        self.peer.sendall(b"sent before the move")

    def still_serve(self) -> Any:
        """Check every one the same as before the move; the connection accepted now."""
        assert self.quiet.recv(100, timeout=DEADLINE) == b"sent before the move"
        self.quiet.sendall(b"and back")
        self.peer.settimeout(DEADLINE)
        assert self.peer.recv(100) == b"and back"
        accepted, _ = self.listener.accept(timeout=DEADLINE)
        self.waiting.sendall(b"queued in the backlog")
        assert accepted.recv(100, timeout=DEADLINE) == b"queued in the backlog"
        return accepted

    def close(self) -> None:
        self.peer.close()
        self.waiting.close()


def test_rpc_sockets_move_with_their_namespace_through_scale_1_2_1(
        tmp_path: Path, echo_port: int) -> None:
    ns = moving_namespace("sockets")
    with start_farm(tmp_path, 1) as farm, \
            socket.create_server(("127.0.0.1", 0)) as plain_server:
        client = farm.client()
        held = Held(client, ns, plain_server)
        streamer = Streamer(farm.client(), ns, echo_port)
        try:
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

            accepted = held.still_serve()
            rows = {row["sid"]: row for row in client.net.list(ns)}
            assert rows[held.listener.sid]["listening"]
            assert {held.quiet.sid, held.listener.sid, streamer.sock.sid,
                    accepted.sid} <= set(rows)
        finally:
            held.close()


def test_a_rolled_back_move_hands_the_sockets_back_to_their_source(tmp_path: Path) -> None:
    """A step that fails after the source handed its sockets over is rolled back, and the
    rollback brings the sockets back from the target (``lost_handover.py`` fails every
    step of the namespace's batch that way, so the scale gives up and the slot stays
    with kernel 0): the same sids serve there, with the bytes that waited and the
    connection in the backlog.  Left at the target, the sockets would be parked where no
    slot of theirs is owned, and kernel 0 would answer ``EBADF``."""
    ns = moving_namespace("handback")
    lose_handover = (str(Path(__file__).with_name("lost_handover.py")), str(key_slot(ns)))
    config = "[supervisor]\nscale_batch_slots = 16384\n"  # one batch: three failed steps
    with start_farm(tmp_path, 1, config_text=config, entry=lose_handover) as farm, \
            socket.create_server(("127.0.0.1", 0)) as plain_server:
        client = farm.client()
        held = Held(client, ns, plain_server)
        try:
            with pytest.raises(KernelfarmError, match="could not move slots"):
                client.scale(2)
            assert farm.log().count("but its answer was lost; rolling back") == 3
            assert owner_of(farm, ns) == 0
            held.still_serve()
        finally:
            held.close()
