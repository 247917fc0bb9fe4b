"""One connection's flood of requests does not hold a kernel's loop: it is served a turn at a
time (:data:`~kernelfarm.rpc.protocol.TURN_BYTES` of input, or
:data:`~kernelfarm.rpc.protocol.TURN_SECONDS` of slow requests), and the kernel's other
connections are served in between; nothing of the flood is lost or reordered.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from time import perf_counter
from typing import Any, Iterator, Sequence

import msgpack
import pytest

from farmctl import start_farm
from kernelfarm.rpc.protocol import TURN_BYTES, ServerStream, encode_request
from rawpeer import Peer, kernel_addr


class _Conn:
    reserved = 0


def _echo(conn: object, msgid: int, method: str, params: Sequence[Any]) -> list[Any]:
    return [1, msgid, None, params[0]]


def _turns(stream: ServerStream, handle: Any) -> list[list[int]]:
    """Serve ``stream`` to its end as a connection would, turn by turn: each turn's msgids."""
    turns = []
    while True:
        batch = stream.serve(handle, _Conn(), 64, 1 << 30)
        assert batch.fatal is None and not batch.notices
        turns.append([reply[1] for reply in batch.replies])
        if not batch.more:  # only the turn's bound stops these batches early
            return turns


def test_a_flood_in_one_read_is_served_a_turn_of_bytes_at_a_time() -> None:
    requests = [encode_request(i, "echo", [i]) for i in range(4000)]
    stream = ServerStream(1 << 20, turn_bytes=4096)
    stream.feed(b"".join(requests))
    turns = _turns(stream, _echo)
    assert [msgid for turn in turns for msgid in turn] == list(range(4000))  # all, in order
    per_turn = 4096 // len(requests[0])
    assert all(len(turn) <= per_turn + 1 for turn in turns), [len(t) for t in turns]
    assert len(turns) >= 4000 // (per_turn + 1)


def test_a_read_that_fits_in_a_turn_is_served_in_one() -> None:
    stream = ServerStream(1 << 20)
    stream.feed(b"".join(encode_request(i, "echo", [i]) for i in range(16)))
    batch = stream.serve(_echo, _Conn(), 64, 1 << 20)
    assert len(batch.replies) == 16 and not batch.more


def test_slow_requests_are_served_a_turn_of_time_at_a_time() -> None:
    """200 requests of 1 ms each fit in one turn's bytes; the clock splits them."""

    def slow(conn: object, msgid: int, method: str, params: Sequence[Any]) -> list[Any]:
        until = perf_counter() + 0.001
        while perf_counter() < until:
            pass
        return [1, msgid, None, None]

    stream = ServerStream(1 << 20, turn_seconds=0.003)
    data = b"".join(encode_request(i, "slow", ["/v/" + "x" * 20]) for i in range(200))
    assert len(data) < TURN_BYTES
    stream.feed(data)
    turns = _turns(stream, slow)
    assert [msgid for turn in turns for msgid in turn] == list(range(200))
    # The message that passes the deadline is the turn's last: at most 3 ms / 1 ms + 1.
    assert max(len(turn) for turn in turns) <= 4, [len(t) for t in turns]


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process is stopped in the block: what is sent to it waits in its sockets, and
    it finds all of it at once when it goes on."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


FLOODS = {
    # 2,000 mkdirs in a volume: 58 KiB, quick each; the byte bound slices them.
    "mkdirs": (2000, "/flood/d", "/flood"),
    # 300 volume creations: 9 KiB, less than a turn's bytes, a few fsyncs each; the clock
    # slices them.
    "volumes": (300, "/flood-", "/"),
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_a_flooded_kernel_answers_its_other_connections_between_turns(
        tmp_path: Path, flood: str) -> None:
    """A client pipelines a flood of mkdirs in one write; a second connection's listdir,
    sent right after, is served after the flood's first turn, not after the whole flood:
    it sees only part of the flood done.  Then every mkdir is answered, in order.  (The
    supervisor's heartbeat is such another connection.)"""
    count, prefix, listed = FLOODS[flood]
    with start_farm(tmp_path, 1) as farm:
        addr = kernel_addr(farm.cluster_map())
        flooder, prober = Peer(addr), Peer(addr)
        assert prober.call(1, "fs.mkdir", "/flood")[2] is None

        def done() -> int:
            names = prober.call(2, "fs.listdir", listed)[3]
            return sum(f"{listed.rstrip('/')}/{name}".startswith(prefix) for name in names)

        flood_bytes = b"".join(encode_request(i + 1, "fs.mkdir", [f"{prefix}{i:05d}"])
                               for i in range(count))
        assert len(flood_bytes) < 64 * 1024  # one read of the kernel
        assert (len(flood_bytes) > 2 * TURN_BYTES) == (flood == "mkdirs")
        (kernel,) = farm.kernel_pids()
        # Both requests wait in the kernel's sockets, the flood's first: the kernel's next
        # loop turn finds them together and reads the flood first.
        with stopped(kernel):
            flooder.send(flood_bytes)
            prober.send(msgpack.packb([0, 1, "fs.listdir", [listed]]))
        reply = prober.next_message()
        assert reply[:3] == [1, 1, None], reply
        first = sum(f"{listed.rstrip('/')}/{name}".startswith(prefix) for name in reply[3])
        assert first < count // 2, f"{first} of {count} mkdirs done first"
        replies = [flooder.next_message() for _ in range(count)]
        assert [r[1] for r in replies] == list(range(1, count + 1))
        assert all(r[2] is None for r in replies), next(r for r in replies if r[2])
        assert done() == count
        flooder.close()
        prober.close()
