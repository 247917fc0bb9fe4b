"""A wrong call is answered in the contract's words, and costs the log one line at most."""

from __future__ import annotations

from typing import Iterator

import msgpack
import pytest

import rawpeer
from farmctl import Farm, start_farm
from rawpeer import Peer


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with start_farm(tmp_path_factory.mktemp("params"), 1) as farm:
        yield farm


@pytest.fixture
def peer(farm: Farm) -> Iterator[Peer]:
    peer = Peer(rawpeer.kernel_addr(farm.cluster_map()))
    yield peer
    peer.close()


@pytest.mark.parametrize("method, params, message", [
    ("fs.stat", ["/a", 1, 2], "fs.stat takes 1 parameter (path), got 3"),
    ("fs.mkdir", [], "fs.mkdir takes 1 or 2 parameters (path[, mode]), got 0"),
    ("fs.pread", ["/a/b"], "fs.pread takes 3 parameters (path, offset, size), got 1"),
    ("kernel.ping", [1, 2, 3], "kernel.ping takes no parameters, got 3"),
    ("net.socket", [], "net.socket takes 2 parameters (ns, kind), got 0"),
    ("net.recv", [], "net.recv takes 3 or 4 parameters (ns, sid, size[, timeout]), got 0"),
    ("net.connect", ["ns", 1, "127.0.0.1", 1, 2, 3],
     "net.connect takes 4 or 5 parameters (ns, sid, host, port[, timeout]), got 6"),
])
def test_a_wrong_parameter_count_is_einval_in_the_contracts_words(
        peer: Peer, method: str, params: list[object], message: str) -> None:
    reply = peer.call(1, method, *params)
    assert reply[:2] == [1, 1] and reply[3] is None
    assert reply[2]["code"] == "EINVAL"
    assert message in reply[2]["message"]
    assert "positional" not in reply[2]["message"]


def test_a_flood_of_bad_calls_logs_a_few_lines_and_no_traceback(
        farm: Farm, peer: Peer) -> None:
    """(Runs last in this module: it fills the rate-limited log's window.)"""
    bad = [[0, i, "net.socket" if i % 2 else "fs.stat", [] if i % 2 else [1]]
           for i in range(2000)]
    peer.send(b"".join(msgpack.packb(m) for m in bad))
    replies = [peer.next_message() for _ in bad]
    assert all(r[2]["code"] == "EINVAL" for r in replies)
    assert peer.call(5000, "kernel.ping")[2] is None
    log = farm.log()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "EINVAL" in line]
    assert 0 < len(lines) <= 25, len(lines)
