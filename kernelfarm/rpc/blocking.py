"""Client side of msgpack-rpc over a plain blocking socket, for the blocking client.

One call at a time per connection keeps it simple and thread-free; the blocking client pools
one connection per kernel.  A pooled connection whose peer has gone (its kernel restarted)
is noticed *before* a request is written on it, so a request is never sent into a dead
socket and then left in doubt.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any


from kernelfarm.errors import (
    ConnectionLost, KernelfarmError, Timeout, connect_failed, from_wire,
)
from kernelfarm.rpc.protocol import (
    CLIENT_MAX_MESSAGE, ERROR_NOTIFICATION, MSGID_MAX, Notification, Response, RpcStream,
    classify, encode_request,
)

READ_CHUNK = 256 * 1024


def readable(source: Any, timeout: float) -> bool:
    """Whether ``source`` (a socket, file or descriptor) has data within ``timeout`` s.

    poll, not select: select() refuses descriptors of 1024 and above, which a process
    holding many connections (or a raised fd limit) reaches.
    """
    poller = select.poll()
    poller.register(source, select.POLLIN)
    return bool(poller.poll(max(timeout, 0.0) * 1000))


class BlockingConnection:
    """One connection; the same ``call``/``closed``/``close`` as the asyncio one."""

    def __init__(self, host: str, port: int, *, connect_timeout: float | None = 10.0,
                 max_message_bytes: int = CLIENT_MAX_MESSAGE) -> None:
        self.addr = (host, port)
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except socket.timeout as exc:
            raise Timeout(f"connect to {host}:{port} timed out") from exc
        except OSError as exc:
            raise connect_failed(exc, host, port) from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._stream = RpcStream(max_message_bytes)
        self._next_id = 0
        self._broken = False

    @property
    def closed(self) -> bool:
        """True also when the peer closed or reset the connection while we were idle."""
        if self._broken:
            return True
        if not readable(self._sock, 0):
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        if self._broken:
            raise ConnectionLost(f"connection to {self.addr} is closed")
        msgid = self._next_id
        self._next_id = (msgid + 1) & MSGID_MAX
        deadline = None if timeout is None else time.monotonic() + timeout
        request = encode_request(msgid, method, params)  # params it refuses spare the socket
        try:
            self._sock.sendall(request)
            error, result = self._wait_reply(msgid, method, deadline)
        except KernelfarmError:  # first: Timeout and ConnectionLost are OSErrors too
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"connection to {self.addr} lost: {exc}") from exc
        if error is not None:
            raise from_wire(error)
        return result

    def _wait_reply(self, msgid: int, method: str,
                    deadline: float | None) -> tuple[Any, Any]:
        """(error, result) of our reply; transport failures raise."""
        while True:
            for obj in self._stream:
                message = classify(obj)
                if isinstance(message, Response) and message.msgid == msgid:
                    return message.error, message.result
                if isinstance(message, Notification) and message.method == ERROR_NOTIFICATION:
                    raise from_wire(message.params[0] if message.params else {})
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"{method}: no reply from {self.addr} in time")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(READ_CHUNK)
            except socket.timeout:
                raise Timeout(f"{method}: no reply from {self.addr} in time") from None
            except OSError as exc:
                raise ConnectionLost(f"connection to {self.addr} lost: {exc}") from exc
            if not data:
                raise ConnectionLost(f"connection to {self.addr} closed by the peer")
            self._stream.feed(data)

    def close(self) -> None:
        self._broken = True
        self._sock.close()


def connect(host: str, port: int, *, timeout: float | None = 10.0,
            max_message_bytes: int = CLIENT_MAX_MESSAGE) -> BlockingConnection:
    """Open a connection (``timeout`` bounds connecting only), as ``rpc.client.connect``."""
    return BlockingConnection(host, port, connect_timeout=timeout,
                              max_message_bytes=max_message_bytes)
