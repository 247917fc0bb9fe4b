"""The asyncio client connection: the requests of one loop turn leave in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from kernelfarm.rpc.client import RpcClientConnection
from kernelfarm.rpc.protocol import GATHER_BYTES, encode_request, encode_request_parts


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


def requests_in(write: list[bytes]) -> list[list[Any]]:
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
