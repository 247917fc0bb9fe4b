"""A raw msgpack-rpc peer for hostile-input tests: bytes out, whatever comes back in.

Not the project's client, on purpose: these tests send what no well-behaved client would.
"""

from __future__ import annotations

import socket
from typing import Any

import msgpack

from farmctl import ADMIN_TOKEN


class Peer:
    """One TCP connection to a kernel: send bytes, read messages until EOF."""

    def __init__(self, addr: tuple[str, int], timeout: float = 10.0,
                 token: str | None = ADMIN_TOKEN) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)
        opened.add(self)
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=256 * 1024 * 1024)
        if token is not None:  # says who it is first, as every client does (an admin gone bad)
            reply = self.call(0, "auth.hello", token)
            assert reply[:3] == [1, 0, None], reply

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, msgid: int, method: str, *params: Any) -> Any:
        """Send one request and return its reply ``[1, msgid, error, result]``."""
        self.send(msgpack.packb([0, msgid, method, list(params)]))
        return self.next_message()

    def next_message(self) -> Any:
        """The next message, or ``None`` at EOF."""
        while True:
            for msg in self.unpacker:
                return msg
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.unpacker.feed(data)

    def closed_by_peer(self) -> bool:
        """Read to EOF (whatever is still coming is discarded)."""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return True
            if not data:
                return True

    def close(self) -> None:
        self.sock.close()
        opened.discard(self)


opened: set[Peer] = set()
"""Every peer made, for the suite's clean-up (``conftest.close_raw_peers``): a test that
fails before it closes its peers must not fail the next one with unclosed-socket
warnings when they are collected there."""


def kernel_addr(cluster_map: dict[str, Any], index: int = 0) -> tuple[str, int]:
    host, port = cluster_map["kernels"][index]["addr"]
    return host, port
