"""A msgpack-rpc connection over a plain socket, as a client in another language would
speak it: no project client code, one call at a time, errors returned as the wire map."""

from __future__ import annotations

import socket
from typing import Any

import msgpack


class RawConnection:
    def __init__(self, addr: tuple[str, int] | list[Any], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((addr[0], int(addr[1])), timeout=timeout)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.msgid = 0

    def call(self, method: str, *params: Any) -> tuple[Any, Any]:
        """``(error, result)`` of one call; the error is the wire map or ``None``."""
        self.msgid += 1
        self.sock.sendall(msgpack.packb([0, self.msgid, method, list(params)]))
        while True:
            for message in self.unpacker:
                if message[0] == 1 and message[1] == self.msgid:
                    return message[2], message[3]
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.unpacker.feed(data)

    def code(self, method: str, *params: Any) -> str | None:
        """The error code of a call, ``None`` when it succeeded."""
        error, _ = self.call(method, *params)
        return None if error is None else str(error["code"])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
