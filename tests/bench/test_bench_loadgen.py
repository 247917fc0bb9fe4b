"""The load generator: real runs against the echo server, its hot loop, and its cleanup."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import msgpack
import psutil
import pytest

from kernelfarm.bench.echo import EchoProcess, running_echo
from kernelfarm.bench.histogram import Histogram
from kernelfarm.bench.loadclient import LoadConnection
from kernelfarm.bench.loadgen import ConnectionPlan, LoadGenError, deal, run_load
from kernelfarm.bench.replystream import lay_out

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
    # Every client process is gone (processes of other tests may have ended meanwhile:
    # test_static's mypy and ruff run beside the suite).
    assert descendants() - before == set()
    # The echo answers in order, so once each slot's reply is learned reads are compared.
    assert result.by_bytes > result.ops // 2
    assert 1 <= result.ops / result.reads <= 8


def test_load_processes_run_pinned_to_the_cores_given(echo: EchoProcess) -> None:
    """Each load process pins itself to its core before its window opens."""
    core = sorted(psutil.Process().cpu_affinity() or [0])[-1]
    seen: list[list[int]] = []

    def look() -> None:
        for child in psutil.Process().children():
            try:  # another test's child may be exiting (a zombie) beside the load's
                if "kernelfarm.bench.loadclient" in " ".join(child.cmdline()):
                    seen.append(sorted(child.cpu_affinity()))
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue

    plans = [ConnectionPlan(echo.address, [ECHO_CHAIN] * 4) for _ in range(2)]
    result = run_load(plans, duration_s=0.3, warmup_s=0.1, processes=2, cores=[core],
                      on_window_start=look)
    assert result.ops > 0 and result.errors == {}
    assert seen == [[core], [core]]


def test_a_server_giving_another_result_than_the_one_required_is_counted(
        echo: EchoProcess) -> None:
    """The echo answers b"x": a plan requiring b"y" gets an EBADRESULT per reply, and one
    requiring b"x" gets none (its replies compared as bytes from the first)."""
    for required, errors in ((b"y", "EBADRESULT"), (b"x", None)):
        chain = [("echo", [b"x"], required)]
        result = run_load([ConnectionPlan(echo.address, [chain] * 4)], duration_s=0.3,
                          warmup_s=0.1, processes=1)
        assert result.ops > 0
        assert result.errors == ({errors: result.ops} if errors else {})
        assert result.by_bytes == (0 if errors else result.ops)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True


def make_connection(slots: list[list[bytes]]) -> tuple[LoadConnection, FakeTransport, Histogram]:
    histogram = Histogram()
    connection = LoadConnection(slots, histogram, lambda: None)
    transport = FakeTransport()
    connection.connection_made(transport)
    return connection, transport, histogram


def stream_of(connection: LoadConnection) -> object:
    """The reply stream the connection has laid out (read anew: not narrowed by a check)."""
    return connection._stream


def reply(msgid: int, error: Any = None) -> bytes:
    return response(msgid, None, error)


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


def test_connections_are_dealt_in_contiguous_blocks_of_even_size() -> None:
    """Laid out grouped by kernel, a block keeps a process on as few kernels as it can."""
    assert deal(list("AAAABBBB"), 2) == [list("AAAA"), list("BBBB")]
    assert deal(list("abcde"), 2) == [list("ab"), list("cde")]
    assert deal(list("abc"), 3) == [["a"], ["b"], ["c"]]
    blocks = deal(list(range(50)), 4)
    assert sum(blocks, []) == list(range(50)) and {len(b) for b in blocks} == {12, 13}


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


def response(msgid: Any, result: Any, error: Any = None) -> bytes:
    """A reply to ``msgid`` (any value: a hostile reply's too)."""
    packed: bytes = msgpack.packb([1, msgid, error, result])
    return packed


def test_replies_cut_anywhere_are_counted_and_checked_whether_parsed_or_compared() -> None:
    """A slot's first good reply is learned; later reads are compared with the expected
    stream by bytes.  A reply cut at any byte by a read is taken up where it stopped, and
    an error among expected replies is still counted."""
    replies = b"".join(response(msgid % 2, STAT, error) for msgid, error in
                       enumerate([None, None, {"code": "ENOENT"}, None, None, None]))
    for cut in range(1, 40):
        connection, transport, histogram = make_connection([[b"A"], [b"B"]])
        connection.start()
        for start in range(0, len(replies), cut):
            connection.data_received(replies[start:start + cut])
        assert connection.ops == 6 and histogram.count == 6
        assert connection.errors == {"ENOENT": 1}
        assert b"".join(transport.written[1:]) == b"AB" * 3
        assert connection.protocol_errors == 0
        assert connection.by_bytes >= 1  # the last reply at least was compared, not parsed


def expected_connection(depth: int = 3) -> tuple[LoadConnection, FakeTransport, Histogram]:
    """Slots with two-request chains whose replies are given: compared from the start."""
    slots = [[b"a%d" % slot, b"b%d" % slot] for slot in range(depth)]
    replies: list[list[bytes | None]] = [[response(slot, b"x" * slot), response(slot, slot)]
                                         for slot in range(depth)]
    histogram = Histogram()
    connection = LoadConnection(slots, histogram, lambda: None, replies)
    transport = FakeTransport()
    connection.connection_made(transport)
    return connection, transport, histogram


def test_expected_replies_in_order_are_compared_as_bytes_and_release_the_next_requests(
        ) -> None:
    connection, transport, histogram = expected_connection()
    connection.start()
    assert transport.written == [b"a0a1a2"]
    rounds = b"".join(response(slot, b"x" * slot) for slot in range(3)) + \
        b"".join(response(slot, slot) for slot in range(3))
    stream = rounds * 3
    for cut in (1, 5, 12):  # replies are 4..7 bytes: a read holds at most the 3 owed
        connection, transport, histogram = expected_connection()
        connection.start()
        for start in range(0, len(stream), cut):
            connection.data_received(stream[start:start + cut])
        assert connection.ops == connection.by_bytes == histogram.count == 18
        assert connection.errors == {} and connection.protocol_errors == 0
        assert b"".join(transport.written[1:]) == b"b0b1b2a0a1a2" * 3


def test_a_wrong_result_is_an_error_even_amid_replies_compared_as_bytes() -> None:
    """Switch the result check off (``_check`` learning every reply) and this fails."""
    connection, transport, _ = expected_connection()
    connection.start()
    wrong = response(0, b"") + response(1, b"wrong") + response(2, b"xx")
    right = [response(0, b"") + response(1, b"x") + response(2, b"xx"),
             response(0, 0) + response(1, 1) + response(2, 2)]
    for data in (wrong, right[1], right[0], right[1], wrong):
        connection.data_received(data)
    assert connection.ops == 15
    assert connection.errors == {"EBADRESULT": 2}
    assert connection.by_bytes == 13  # all but the two wrong ones: their expected bytes
    assert connection.protocol_errors == 0


def test_replies_out_of_order_are_matched_one_by_one_then_compared_again_in_the_new_order(
        ) -> None:
    connection, transport, histogram = expected_connection()
    connection.start()
    connection.data_received(response(2, b"xx") + response(0, b""))
    connection.data_received(response(1, b"x"))
    assert transport.written[1:] == [b"b2b0", b"b1"]
    # Out of the laid-out order, yet each its slot's expected bytes: none decoded.
    assert connection.by_bytes == 3 and connection._stream is None
    # The server now answers in the order the requests left: 2, 0, 1, round after round.
    # The first stream lasted less than a period (6 replies), so 6 are taken one by one
    # (the 3 above, then reads up to the 7th reply) before the stream is laid out again
    # in the new order; the other 8 are compared with it.
    stream = (response(2, 2) + response(0, 0) + response(1, 1)
              + response(2, b"xx") + response(0, b"") + response(1, b"x")) * 2
    for start in range(0, len(stream), 12):  # replies are 4..7 bytes: 3 at most a read
        connection.data_received(stream[start:start + 12])
    assert connection.by_bytes == connection.ops == histogram.count == 15
    assert stream_of(connection) is not None
    assert b"".join(transport.written[3:]) == b"a2a0a1b2b0b1" * 2
    assert connection.errors == {} and connection.protocol_errors == 0


def test_an_expected_reply_to_a_slot_not_in_flight_is_a_protocol_error() -> None:
    """Matching a reply by its bytes still requires its slot to have a request in flight:
    slot 0's reply twice in one read (its next request leaves after the read)."""
    slots = [[b"a"], [b"b"]]
    replies: list[list[bytes | None]] = [[response(0, 0)], [response(1, 1)]]
    connection = LoadConnection(slots, Histogram(), lambda: None, replies)
    transport = FakeTransport()
    connection.connection_made(transport)
    connection.start()
    connection.data_received(response(1, 1) + response(0, 0) + response(0, 0))
    assert transport.aborted and connection.protocol_errors == 1


def test_a_server_that_keeps_changing_the_order_is_parsed_not_laid_out_every_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Laying a stream out costs about a parsed reply per entry: after streams that do
    not last a period, the wait before the next doubles (remove the backoff: 200 layouts)."""
    layouts = []

    def counted(*args: Any) -> Any:
        layouts.append(1)
        return lay_out(*args)

    monkeypatch.setattr("kernelfarm.bench.loadclient.lay_out", counted)
    connection, transport, _ = make_connection([[b"A"], [b"B"]])
    connection.start()
    first = 0
    for _ in range(200):  # each read swaps the two slots' order
        connection.data_received(response(1 - first, STAT) + response(first, STAT))
        first = 1 - first
    assert connection.ops == 400 and connection.errors == {}
    assert len(layouts) <= 12
    assert transport.written[1:] == [b"BA", b"AB"] * 100  # one write per read, in order


def test_more_replies_in_a_read_than_requests_in_flight_is_a_protocol_error() -> None:
    connection, transport, _ = expected_connection()
    connection.start()
    connection.data_received(response(0, b"") + response(1, b"x") + response(2, b"xx")
                             + response(0, 0))  # the expected stream, one reply too far
    assert transport.aborted and connection.protocol_errors == 1


def test_latencies_come_from_each_slots_send_time_when_compared_as_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([1_000, 5_000, 9_000, 20_000])
    monkeypatch.setattr("kernelfarm.bench.loadclient.time.perf_counter_ns", lambda: next(clock))
    connection, _, histogram = expected_connection()
    connection.start()                                               # 3 requests at 1 us
    connection.data_received(response(0, b"") + response(1, b"x"))  # 2 back at 5 us
    connection.data_received(response(2, b"xx") + response(0, 0))   # at 9 us: sent 1, 5
    connection.data_received(response(1, 1) + response(2, 2))       # at 20 us: sent 5, 9
    assert connection.by_bytes == 6
    assert sorted(histogram.percentile(p) // 100 for p in (1, 40, 60, 80, 99)) == \
        [40, 40, 80, 110, 150]


@pytest.mark.parametrize("garbage", [
    response(0, None),                    # slot 0's request is not in flight any more
    response(5, None),                    # a msgid no slot sent
    response(0.0, None),                  # a msgid that is not an int
])
def test_a_reply_no_request_in_flight_can_have_caused_is_a_protocol_error(
        garbage: bytes) -> None:
    for connection, _, _ in (make_connection([[b"A"], [b"B"]]), expected_connection(2)):
        connection.start()
        transport = connection._transport
        assert isinstance(transport, FakeTransport)
        first = response(0, b"") if connection._stream else response(0, None)
        connection.data_received(first + garbage)
        assert transport.aborted and connection.protocol_errors == 1


@pytest.mark.parametrize("garbage", [
    msgpack.packb([1, 99, None, None]),   # a msgid no slot sent
    msgpack.packb([1, 0, None]),          # not a 4-element response
    msgpack.packb([0, 0, None, None]),    # a request, not a response
    msgpack.packb("text"),
])
def test_a_broken_server_aborts_a_connection_that_compares_replies(garbage: bytes) -> None:
    connection, transport, _ = make_connection([[b"r"]])
    connection.start()
    connection.data_received(msgpack.packb([1, 0, None, STAT]))
    assert connection._stream is not None
    connection.data_received(garbage)
    assert transport.aborted
    assert connection.protocol_errors == 1
