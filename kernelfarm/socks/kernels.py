"""The front-end's way to the kernels: which one owns a namespace, and its hand-off socket.

One ``SOCK_SEQPACKET`` connection per kernel carries every request of the front-end
(``check``, ``relay``), each answered by id, so a hand-off costs one packet each way.  The
slot table comes from ``cluster.map`` through the ordinary asyncio client; an answer of
``MOVED``/``TRYAGAIN`` (the namespace is moving) or a lost connection (the kernel is
restarting) refreshes it and asks again, until a deadline.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
from typing import Any

import kernelfarm.aio
from kernelfarm.errors import ConnectionLost, KernelfarmError, from_wire
from kernelfarm import handoff
from kernelfarm.partition import SlotTable, key_slot

RETRY_DEADLINE = 10.0
RETRY_PAUSE = 0.02


class HandoffConnection:
    """A front-end's connection to one kernel's hand-off socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.closed = False
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def open(cls, path: str) -> HandoffConnection:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, path)
        except BaseException:
            sock.close()
            raise
        return cls(loop, sock)

    async def request(self, message: dict[str, Any], fds: list[int] | None = None
                      ) -> dict[str, Any]:
        """Send one request (with ``fds`` attached); its reply, or the error it names."""
        if self.closed:
            raise ConnectionLost("hand-off connection closed")
        msgid = next(self._ids)
        packet = handoff.pack({**message, "id": msgid})
        answer: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._waiting[msgid] = answer
        try:
            await self._send(packet, fds or [])
            reply = await answer
        finally:
            self._waiting.pop(msgid, None)
        if reply.get("error") is not None:
            raise from_wire(reply["error"])
        return reply

    async def _send(self, packet: bytes, fds: list[int]) -> None:
        while True:
            try:
                socket.send_fds(self.sock, [packet], fds)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self.close()
                raise ConnectionLost(f"hand-off connection broke: {exc}") from exc
            writable = self.loop.create_future()
            self.loop.add_writer(self.sock.fileno(), writable.set_result, None)
            try:
                await writable
            finally:
                self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        while not self.closed:
            try:
                packet, fds = handoff.receive(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, ValueError):
                self.close()
                return
            for fd in fds:  # a kernel never sends any
                socket.close(fd)
            if not packet:
                self.close()
                return
            try:
                reply = handoff.unpack(packet)
            except ValueError:
                continue
            msgid = reply.get("id")
            answer = self._waiting.get(msgid) if isinstance(msgid, int) else None
            if answer is not None and not answer.done():
                answer.set_result(reply)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ConnectionLost("hand-off connection closed"))


class Kernels:
    """Routes hand-off requests to the kernel that owns the namespace."""

    def __init__(self, client: kernelfarm.aio.Client) -> None:
        self.client = client
        self.table: SlotTable | None = None
        self.paths: dict[int, str | None] = {}
        self._conns: dict[str, HandoffConnection] = {}

    async def refresh(self) -> None:
        cluster_map = await self.client.cluster_map()
        self.table = SlotTable.from_ranges(cluster_map["epoch"], cluster_map["slots"])
        self.paths = {k["id"]: k.get("handoff") for k in cluster_map["kernels"]}

    async def request(self, ns: str, message: dict[str, Any],
                      fds: list[int] | None = None) -> dict[str, Any]:
        """Ask the namespace's kernel; follow moves and restarts until the deadline.

        A ``relay`` is retried only when the kernel never took the connection (it
        answered ``MOVED``, or the hand-off socket could not be reached).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_DEADLINE
        while True:
            sent = False
            try:
                if self.table is None:
                    await self.refresh()
                conn = await self._connection(self._path(ns))
                sent = True
                return await conn.request({**message, "ns": ns}, fds)
            except (KernelfarmError, OSError) as exc:
                lost = isinstance(exc, ConnectionLost) and message.get("op") == "check"
                retry = _retryable(exc) or lost or \
                    (not sent and not isinstance(exc, PermissionError))
                if not retry or loop.time() > deadline:
                    raise
            await asyncio.sleep(RETRY_PAUSE)
            self.table = None

    def _path(self, ns: str) -> str:
        assert self.table is not None
        owner = self.table.owner(key_slot(ns))
        path = self.paths.get(owner)
        if path is None:
            raise OSError(errno.EOPNOTSUPP, f"kernel {owner} has no hand-off socket")
        return path

    async def _connection(self, path: str) -> HandoffConnection:
        conn = self._conns.get(path)
        if conn is None or conn.closed:
            opened = await HandoffConnection.open(path)
            conn = self._conns.get(path)
            if conn is not None and not conn.closed:  # another request was quicker
                opened.close()
                return conn
            conn = self._conns[path] = opened
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, KernelfarmError) and exc.code in handoff.RELAY_ERRORS_RETRYABLE
