"""The asyncio client connection: the requests of one loop turn leave in one write, and a
big result is received into its own buffer, however the stream is cut."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Callable

import msgpack
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelfarm.rpc.client import (
    SCRATCH_BYTES, RpcClientConnection, StreamingClientConnection, connect,
)
from kernelfarm.rpc.protocol import (
    GATHER_BYTES, encode_replies, encode_request, encode_request_parts,
)


class RecordingTransport:
    """What the connection writes, one entry per system call it would make."""

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append([data])

    def writelines(self, parts: list[bytes]) -> None:
        self.writes.append(list(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def requests_in(write: Sequence[bytes | bytearray]) -> list[list[Any]]:
    unpacker = msgpack.Unpacker()
    unpacker.feed(b"".join(write))
    return list(unpacker)


@pytest.mark.asyncio
async def test_the_requests_of_one_turn_leave_in_one_write_in_order() -> None:
    conn = RpcClientConnection()
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    for n in range(3):
        conn.send_request("echo", [n])
    assert transport.writes == []  # not before the turn ends
    await asyncio.sleep(0)
    (write,) = transport.writes
    assert [(msg[2], msg[3]) for msg in requests_in(write)] == \
        [("echo", [0]), ("echo", [1]), ("echo", [2])]
    # A request sent just before closing is written, not dropped.
    conn.send_request("echo", [3])
    conn.close()
    assert [msg[3] for msg in requests_in(transport.writes[-1])] == [[3]]
    assert transport.closed


@pytest.mark.parametrize("size", [0, 100, 65535, 65536, 1 << 20])
def test_a_big_last_parameter_is_written_as_it_is_not_copied(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    params = ["/v/f", 4096, data]
    parts = encode_request_parts(7, "fs.pwrite", params)
    assert b"".join(parts) == encode_request(7, "fs.pwrite", params)
    assert (parts[-1] is data) == (size >= GATHER_BYTES)
    # A bytearray (the mount's gathered writes) decodes as the same bytes.
    (request,) = requests_in(encode_request_parts(7, "fs.pwrite", [0, bytearray(data)]))
    assert request[3] == [0, data]


def encoded_reply(msgid: int, error: Any, result: Any) -> bytes:
    """A reply as a kernel sends it (msgspec, as ``encode_replies``)."""
    return bytes(encode_replies([[1, msgid, error, result]]))


def feed_in_reads(conn: StreamingClientConnection, stream: bytes, reads: list[int]
                  ) -> list[memoryview]:
    """Hand ``stream`` to the connection as the event loop does: each read fills (part
    of) the buffer ``get_buffer`` returned; ``reads`` are the sizes the socket offers."""
    handed: list[memoryview] = []
    at, turn = 0, 0
    while at < len(stream):
        buffer = conn.get_buffer(-1)
        handed.append(buffer)
        offered = reads[turn % len(reads)] if reads else len(stream)
        n = max(1, min(len(buffer), offered, len(stream) - at))
        buffer[:n] = stream[at:at + n]
        conn.buffer_updated(n)
        at, turn = at + n, turn + 1
    return handed


REPLY_RESULTS = st.one_of(
    st.integers(-2**63, 2**63 - 1), st.text(max_size=20), st.binary(max_size=200),
    st.sampled_from([GATHER_BYTES - 1, GATHER_BYTES, 200_000, 1 << 20]).map(
        lambda size: bytes(range(256)) * (size // 256) + b"z" * (size % 256)),
    st.lists(st.integers(0, 1000), max_size=5))


@settings(max_examples=60, deadline=None)
@given(results=st.lists(st.tuples(REPLY_RESULTS, st.booleans()), min_size=1, max_size=6),
       reads=st.lists(st.integers(1, 300_000), max_size=8))
@pytest.mark.asyncio
async def test_replies_decode_the_same_however_the_stream_is_cut(
        results: list[tuple[Any, bool]], reads: list[int]) -> None:
    """Every reply reaches its caller whole, whether a big result is received in place
    or through the unpacker (a header cut by a read), among errors and small replies."""
    conn = StreamingClientConnection()
    conn.connection_made(RecordingTransport())  # type: ignore[arg-type]
    futures = [conn.send_request("fs.pread", []) for _ in results]
    stream = b"".join(
        encoded_reply(n, {"code": "ENOENT", "message": "gone"} if failed else None,
                      None if failed else result)
        for n, (result, failed) in enumerate(results))
    feed_in_reads(conn, stream, reads)
    for future, (result, failed) in zip(futures, results, strict=True):
        if failed:
            with pytest.raises(FileNotFoundError):
                future.result()
        else:
            assert future.result() == result


@pytest.mark.asyncio
async def test_a_big_result_is_read_into_its_own_buffer() -> None:
    """After the header, the socket's bytes go straight into the bytearray the caller
    gets: the event loop is handed views of it, not the scratch buffer."""
    conn = StreamingClientConnection()
    conn.connection_made(RecordingTransport())  # type: ignore[arg-type]
    small, big = conn.send_request("fs.stat", []), conn.send_request("fs.pread", [])
    data = bytes(range(256)) * 4096  # 1 MiB
    handed = feed_in_reads(conn, encoded_reply(0, None, {"size": 1})
                           + encoded_reply(1, None, data), [SCRATCH_BYTES])
    assert small.result() == {"size": 1}
    result = big.result()
    assert result == data and isinstance(result, bytearray)
    in_place = [view for view in handed if view.obj is result]
    assert sum(len(view) for view in in_place) > len(data) - SCRATCH_BYTES
    # The next reply, a small one, is decoded from the scratch buffer again.
    after = conn.send_request("fs.stat", [])
    feed_in_reads(conn, encoded_reply(2, None, [1, 2]), [])
    assert after.result() == [1, 2]


@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
def test_a_real_connection_receives_big_results_in_place(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Through a real socket, on both loops: uvloop hands its read buffers only to a
    protocol that is no ``asyncio.Protocol``, and silently calls ``data_received``
    otherwise."""
    data = bytes(range(256)) * 4096

    async def main() -> list[Any]:
        served = asyncio.Event()

        async def replies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                          ) -> None:
            unpacker = msgpack.Unpacker()
            try:
                while chunk := await reader.read(65536):
                    unpacker.feed(chunk)
                    for _, msgid, _, params in unpacker:
                        writer.write(encoded_reply(msgid, None, data[:params[0]]))
            finally:
                writer.close()
                served.set()

        server = await asyncio.start_server(replies, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = await connect("127.0.0.1", port)
        try:
            return list(await asyncio.gather(*(conn.call("fs.pread", size)
                                               for size in (len(data), 100, len(data)))))
        finally:
            conn.close()
            await asyncio.wait_for(served.wait(), 10)
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        big, small, again = runner.run(main())
    assert big == again == data and small == data[:100]
    assert isinstance(big, bytearray) and isinstance(again, bytearray)
