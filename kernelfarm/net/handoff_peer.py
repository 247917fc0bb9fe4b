"""One connection to a kernel's hand-off socket: a front-end, or a sibling kernel.

Reads the packets of a ``SOCK_SEQPACKET`` connection with their descriptors (wire in
:mod:`kernelfarm.handoff`), refuses what is malformed with an error reply (closing any
descriptor that came with it), and hands each request to the kernel's
:class:`~kernelfarm.net.handoff_service.HandoffService`; replies go out in order, queued
while the socket is full.  Sockets of a moving namespace are taken only from a sibling
kernel (another child of the same supervisor).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from typing import TYPE_CHECKING, Any, Callable

import psutil

from kernelfarm import handoff
from kernelfarm.errors import posix, to_wire

if TYPE_CHECKING:
    from kernelfarm.net.handoff_service import HandoffService

log = logging.getLogger(__name__)

DESCRIPTORS = {"check": (0,), "relay": (1,), "bind": (1,), "adopt": (2,),
               "adopt_socket": (0, 1), "barrier": (0,)}
"""How many descriptors come with each op."""


class HandoffPeer:
    """One connection to the hand-off socket: a front-end, or a sibling kernel."""

    def __init__(self, service: HandoffService, conn: socket.socket) -> None:
        self.service = service
        self.loop = service.loop
        self.conn = conn
        self.closed = False
        self._sibling: bool | None = None
        self._replies: list[bytes] = []
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid, self.uid, _ = struct.unpack("3i", creds)
        self.budget = service.budgets.of(self.pid)
        conn.setblocking(False)
        self.loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        while not self.closed:
            try:
                packet, fds = handoff.receive(self.conn)
            except (BlockingIOError, InterruptedError):
                return
            except ValueError as exc:
                self._reply({"id": None, "error": to_wire(exc)})
                continue
            except OSError:
                self.close()
                return
            if not packet and not fds:
                self.close()
                return
            self._request(packet, fds)

    def _request(self, packet: bytes, fds: list[int]) -> None:
        msgid: Any = None
        try:
            message = handoff.unpack(packet)
            msgid = message.get("id")
            op = message.get("op")
            wanted = DESCRIPTORS.get(op) if isinstance(op, str) else None
            if wanted is None:
                raise ValueError(f"unknown hand-off op {op!r}")
            if len(fds) not in wanted:
                raise ValueError(f"hand-off op {op!r} takes {' or '.join(map(str, wanted))}"
                                 f" descriptors, got {len(fds)}")
        except Exception as exc:
            for fd in fds:
                os.close(fd)
            self._reply({"id": msgid, "error": to_wire(exc)})
            return
        if op == "check":
            self._answer(msgid, lambda: self._authorized(message))
        elif op in ("relay", "bind"):
            task = self.loop.create_task(self.service.relay(message, fds[0], self.budget))
            task.add_done_callback(lambda done: self._finished(msgid, done))
        elif op == "barrier":
            self._reply({"id": msgid, "error": None})  # every packet before it was handled
        else:
            self._adopt(message, fds, is_relay=op == "adopt")

    def _authorized(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"ns": self.service.authorize(message, self.budget)[0]}

    def _adopt(self, message: dict[str, Any], fds: list[int], is_relay: bool) -> None:
        """``adopt`` / ``adopt_socket``: no reply, the sender let go already (its
        ``barrier`` learns that every one was handled, taken or not)."""
        if not self.is_sibling():
            for fd in fds:
                os.close(fd)
            log.warning("refused sockets of %r from a process not of this farm",
                        message.get("ns"))
            return
        try:  # from here the service owns the descriptors, and closes them if it fails
            if is_relay:
                self.service.moves.adopt(message, fds)
            else:
                self.service.moves.adopt_socket(message, fds)
        except Exception as exc:
            log.warning("could not take a socket of %r: %s", message.get("ns"), exc)

    def is_sibling(self) -> bool:
        """Is the peer process another child of our supervisor?"""
        if self._sibling is None:
            try:
                self._sibling = self.uid == os.getuid() and \
                    psutil.Process(self.pid).ppid() == os.getppid()
            except psutil.Error:
                self._sibling = False
        return self._sibling

    def _answer(self, msgid: Any, call: Callable[[], Any]) -> None:
        try:
            self._reply({"id": msgid, "error": None, **(call() or {})})
        except Exception as exc:
            self._reply({"id": msgid, "error": to_wire(exc)})

    def _finished(self, msgid: Any, task: asyncio.Task[dict[str, Any]]) -> None:
        if task.cancelled():
            self._reply({"id": msgid, "error": to_wire(posix(errno.ECANCELED))})
            return
        self._answer(msgid, task.result)

    def _reply(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self._replies.append(handoff.pack(message))
        if len(self._replies) == 1:
            self._flush()

    def _flush(self) -> None:
        while self._replies:
            try:
                self.conn.send(self._replies[0])
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.conn.fileno(), self._drained)
                return
            except OSError:
                self.close()
                return
            self._replies.pop(0)

    def _drained(self) -> None:
        self.loop.remove_writer(self.conn.fileno())
        self._flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.conn.fileno())
        if self._replies:
            self.loop.remove_writer(self.conn.fileno())
        self.conn.close()
        self.service.peers.discard(self)
