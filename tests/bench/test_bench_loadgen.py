"""The load generator: real runs against the echo server, its hot loop, and its cleanup."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import msgpack
import psutil
import pytest

from kernelfarm.bench.echo import EchoProcess, running_echo
from kernelfarm.bench.histogram import Histogram
from kernelfarm.bench.loadclient import LoadConnection
from kernelfarm.bench.loadgen import ConnectionPlan, LoadGenError, run_load

ECHO_CHAIN = [("echo", [b"x"])]


def descendants() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoProcess]:
    with running_echo() as server:
        yield server


def test_a_short_run_against_the_echo_server(echo: EchoProcess) -> None:
    before = descendants()
    plans = [ConnectionPlan(echo.address, [ECHO_CHAIN] * 8) for _ in range(4)]
    windows: list[str] = []
    result = run_load(plans, duration_s=1.0, warmup_s=0.2, processes=2,
                      on_window_start=lambda: windows.append("start"),
                      on_window_end=lambda: windows.append("end"))
    assert result.ops > 0
    assert result.errors == {}
    assert result.lost_connections == 0 and result.protocol_errors == 0
    assert 0.9 <= result.duration_s <= 1.5
    assert result.ops_per_s == pytest.approx(result.ops / result.duration_s, rel=0.2)
    # Every reply counted in the window was timed; no latency is negative or absurd.
    assert result.histogram.count == result.ops
    assert 0 < result.histogram.percentile(50) <= result.histogram.percentile(99.9) < 10**10
    assert result.client_cpu_s > 0
    assert windows == ["start", "end"]
    assert descendants() == before  # every client process is gone


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


def make_connection(slots: list[list[bytes]]) -> tuple[LoadConnection, FakeTransport, Histogram]:
    histogram = Histogram()
    connection = LoadConnection(slots, histogram, lambda: None)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport, histogram


def reply(msgid: int, error: Any = None) -> bytes:
    return msgpack.packb([1, msgid, error, None])


def test_each_reply_sends_that_slots_next_request_in_one_write() -> None:
    connection, transport, histogram = make_connection([[b"A0", b"A1"], [b"B0"]])
    connection.start()
    assert transport.written == [b"A0B0"]
    connection.data_received(reply(0) + reply(1))
    connection.data_received(reply(0))
    assert transport.written[1:] == [b"A1B0", b"A0"]
    assert connection.ops == 3
    assert histogram.count == 3


def test_errors_are_counted_by_code() -> None:
    connection, _, _ = make_connection([[b"r"]] * 3)
    connection.start()
    connection.data_received(
        reply(0, {"code": "ENOENT", "message": "no"}) + reply(1, {"code": "ENOENT"})
        + reply(2, "not a map"))
    assert connection.errors == {"ENOENT": 2, "EMALFORMED": 1}
    assert connection.ops == 3


@pytest.mark.parametrize("garbage", [
    msgpack.packb([1, 99, None, None]),   # a msgid no slot sent
    msgpack.packb([1, 0, None]),          # not a 4-element response
    msgpack.packb("text"),
    b"\xc1",                              # not msgpack
])
def test_a_broken_server_aborts_the_connection(garbage: bytes) -> None:
    connection, transport, _ = make_connection([[b"r"]])
    connection.start()
    connection.data_received(garbage)
    assert transport.aborted
    assert connection.protocol_errors == 1


def test_connections_lost_in_the_window_are_reported() -> None:
    before = descendants()
    with running_echo() as server:
        plans = [ConnectionPlan(server.address, [ECHO_CHAIN] * 4) for _ in range(3)]
        result = run_load(plans, duration_s=0.5, warmup_s=0.1, processes=1,
                          on_window_start=lambda: psutil.Process(server.pid).kill())
    assert result.lost_connections == 3
    assert descendants() == before


def test_an_unreachable_target_is_an_error_and_leaves_no_process() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        before = descendants()
        with pytest.raises(LoadGenError, match="ConnectionRefused"):
            run_load([ConnectionPlan(("127.0.0.1", port), [ECHO_CHAIN])], duration_s=0.5)
    assert descendants() == before


def test_an_interrupt_reaps_the_clients(echo: EchoProcess) -> None:
    before = descendants()

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_load([ConnectionPlan(echo.address, [ECHO_CHAIN])], duration_s=5.0, warmup_s=0.1,
                 processes=2, on_window_start=interrupt)
    assert descendants() == before


@pytest.mark.parametrize("address", [("10.0.0.1", 80), ("0.0.0.0", 80), ("localhost", 80)])
def test_only_loopback_targets_are_accepted(address: tuple[str, int]) -> None:
    with pytest.raises(ValueError, match="127.0.0.1"):
        ConnectionPlan(address, [ECHO_CHAIN])


@pytest.mark.parametrize("kwargs", [
    {"duration_s": 0}, {"duration_s": 10**6}, {"duration_s": 1, "processes": 0},
    {"duration_s": 1, "warmup_s": -1}])
def test_runs_are_bounded(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        run_load([ConnectionPlan(("127.0.0.1", 9), [ECHO_CHAIN])], **kwargs)


def test_plans_need_requests() -> None:
    with pytest.raises(ValueError):
        ConnectionPlan(("127.0.0.1", 9), [])
    with pytest.raises(ValueError):
        ConnectionPlan(("127.0.0.1", 9), [[]])


STAT = {"type": "file", "size": 10, "mode": 0o644, "nlink": 1, "ino": 7, "mtime_ns": 1,
        "ctime_ns": 1}


def test_replies_with_maps_are_counted_without_building_them_even_cut_anywhere() -> None:
    """After the first map result the connection skips results; a reply cut at any byte
    by a read is taken up where it stopped, and msgids and errors are still checked."""
    replies = b"".join(msgpack.packb([1, msgid % 2, error, STAT]) for msgid, error in
                       enumerate([None, None, {"code": "ENOENT"}, None, None, None]))
    for cut in range(1, 40):
        connection, transport, histogram = make_connection([[b"A"], [b"B"]])
        connection.start()
        for start in range(0, len(replies), cut):
            connection.data_received(replies[start:start + cut])
        assert connection.ops == 6 and histogram.count == 6
        assert connection.errors == {"ENOENT": 1}
        assert b"".join(transport.written[1:]) == b"AB" * 3
        assert connection._skipping and connection.protocol_errors == 0


@pytest.mark.parametrize("garbage", [
    msgpack.packb([1, 99, None, None]),   # a msgid no slot sent
    msgpack.packb([1, 0, None]),          # not a 4-element response
    msgpack.packb([0, 0, None, None]),    # a request, not a response
    msgpack.packb("text"),
])
def test_a_broken_server_aborts_a_connection_that_skips_results(garbage: bytes) -> None:
    connection, transport, _ = make_connection([[b"r"]])
    connection.start()
    connection.data_received(msgpack.packb([1, 0, None, STAT]) + garbage)
    assert connection._skipping and transport.aborted
    assert connection.protocol_errors == 1
