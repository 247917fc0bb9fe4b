"""The client's errors are the ones Python code already catches, and still the farm's."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from kernelfarm.errors import ConnectionLost, KernelfarmError, Timeout, from_wire
from kernelfarm.rpc.blocking import BlockingConnection


def test_timeout_and_connection_lost_are_builtin_errors_and_farm_errors() -> None:
    assert issubclass(Timeout, TimeoutError) and issubclass(Timeout, KernelfarmError)
    assert issubclass(ConnectionLost, ConnectionError)
    assert issubclass(ConnectionLost, KernelfarmError)
    decoded = from_wire({"code": "ETIMEOUT", "message": "late", "after": 2})
    assert isinstance(decoded, Timeout) and decoded.after == 2 and str(decoded) == "late"


@pytest.fixture
def silent_peer() -> Iterator[socket.socket]:
    """A listener that accepts (the kernel's backlog does) but never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


def test_a_call_past_its_deadline_raises_timeout_error(silent_peer: socket.socket) -> None:
    conn = BlockingConnection(*silent_peer.getsockname()[:2])
    with pytest.raises(TimeoutError):
        conn.call("kernel.ping", timeout=0.05)
    assert conn.closed  # its reply may still come: the connection is not reused


def test_a_peer_that_hangs_up_raises_connection_error(silent_peer: socket.socket) -> None:
    conn = BlockingConnection(*silent_peer.getsockname()[:2])
    peer, _ = silent_peer.accept()
    peer.close()
    with pytest.raises(ConnectionError):
        conn.call("kernel.ping", timeout=5)
