"""A relay: two connected sockets whose bytes the kernel copies both ways in its own loop.

Each direction is a :class:`Pipe` with two states: *reading* (a reader watches the source)
or *writing* (a chunk the destination did not take yet is held, and a writer watches the
destination).  A pipe never reads while it holds bytes, so a slow receiver stops the
sender through TCP's own flow control (backpressure) and a relay holds at most one chunk
per direction; idle relays hold nothing, because every read lands in one scratch buffer
shared by the whole kernel (one thread: nothing else can touch it meanwhile) and only an
unsent rest is copied out.

End of stream travels as ``shutdown(SHUT_WR)``, so half-closed protocols work; the relay
closes when both directions ended or either side fails.  A relay can be parked (no
watcher, state kept) and taken apart into its descriptors and held bytes, which is how it
moves to another kernel with its namespace: what was read is either sent or carried,
never both.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from kernelfarm.net.counters import Counters

CHUNK = 64 * 1024
"""Largest read, so the most a relay holds per direction."""

READS_PER_WAKEUP = 16
"""Chunks one direction may move per readiness event before the loop serves others: a
fast stream costs one ``epoll_wait`` per 1 MiB, not per chunk."""

_scratch = bytearray(CHUNK)
_scratch_view = memoryview(_scratch)


@dataclass
class RelayState:
    """What a parked relay is, apart from its two descriptors: enough to resume it
    anywhere (``pending`` = held bytes, ``ended`` = that direction saw end of stream)."""

    sid: int
    to_upstream: bytes = b""
    to_client: bytes = b""
    upstream_ended: bool = False
    client_ended: bool = False
    tenant: str | None = None
    """Whose relay it is: other tenants do not see it in ``net.list``."""

    def to_wire(self) -> dict[str, Any]:
        return {"sid": self.sid, "to_upstream": self.to_upstream, "to_client": self.to_client,
                "upstream_ended": self.upstream_ended, "client_ended": self.client_ended,
                "tenant": self.tenant}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RelayState:
        state = cls(sid=data["sid"], to_upstream=bytes(data["to_upstream"]),
                    to_client=bytes(data["to_client"]),
                    upstream_ended=bool(data["upstream_ended"]),
                    client_ended=bool(data["client_ended"]), tenant=data.get("tenant"))
        if not isinstance(state.sid, int) or len(state.to_upstream) > CHUNK or \
                len(state.to_client) > CHUNK or not isinstance(state.tenant, (str, type(None))):
            raise ValueError("relay state out of bounds")
        return state


class Pipe:
    """One direction: read ``src``, write ``dst``, count what passes."""

    __slots__ = ("relay", "loop", "src", "dst", "pending", "ended", "inbound")

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket,
                 pending: bytes, ended: bool, inbound: bool) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.src = src
        self.dst = dst
        self.pending = pending
        self.ended = ended
        self.inbound = inbound

    def start(self) -> None:
        if self.pending:
            self.loop.add_writer(self.dst.fileno(), self._writable)
        elif not self.ended:
            self.loop.add_reader(self.src.fileno(), self._readable)

    def stop(self) -> None:
        if self.pending:
            self.loop.remove_writer(self.dst.fileno())
        elif not self.ended:
            self.loop.remove_reader(self.src.fileno())

    def _readable(self) -> None:
        src, dst, counters = self.src, self.dst, self.relay.counters
        for _ in range(READS_PER_WAKEUP):
            try:
                size = src.recv_into(_scratch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.relay.close()
                return
            if size == 0:
                self._end()
                return
            if self.inbound:
                counters.bytes_in += size
            else:
                counters.bytes_out += size
            view = _scratch_view[:size]
            try:
                sent = dst.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.relay.close()
                return
            if sent < size:
                self.pending = bytes(view[sent:])
                self.loop.remove_reader(src.fileno())
                self.loop.add_writer(dst.fileno(), self._writable)
                return
            if size < CHUNK:
                return  # the source is drained, most likely: back to the loop

    def _writable(self) -> None:
        try:
            sent = self.dst.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.relay.close()
            return
        self.pending = self.pending[sent:]
        if not self.pending:
            self.loop.remove_writer(self.dst.fileno())
            if self.ended:
                self._shut_dst()
            else:
                self.loop.add_reader(self.src.fileno(), self._readable)

    def _end(self) -> None:
        self.loop.remove_reader(self.src.fileno())
        self.ended = True
        self._shut_dst()

    def _shut_dst(self) -> None:
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone already: the other direction will see it
        self.relay.direction_ended()


class Relay:
    """The relay of one handed-over connection (``client``) and its outgoing socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket,
                 upstream: socket.socket, state: RelayState, counters: Counters) -> None:
        self.loop = loop
        self.sid = state.sid
        self.tenant = state.tenant
        self.client = client
        self.upstream = upstream
        self.counters = counters
        """The namespace's counters (``bytes_in`` from upstream, ``bytes_out`` to it)."""
        self.closed = False
        self.on_close: Callable[[Relay], None] | None = None
        client.setblocking(False)
        upstream.setblocking(False)
        self._out = Pipe(self, client, upstream, state.to_upstream, state.client_ended,
                         inbound=False)
        self._in = Pipe(self, upstream, client, state.to_client, state.upstream_ended,
                        inbound=True)
        self.running = False

    def start(self) -> None:
        if self.running or self.closed:
            return
        self.running = True
        self._out.start()
        self._in.start()
        if self._out.ended and self._in.ended and not (self._out.pending or
                                                         self._in.pending):
            self.close()

    def park(self) -> None:
        """Stop moving bytes; everything read so far stays held."""
        if self.running:
            self.running = False
            self._out.stop()
            self._in.stop()

    def state(self) -> RelayState:
        return RelayState(self.sid, self._out.pending, self._in.pending,
                          upstream_ended=self._in.ended, client_ended=self._out.ended,
                          tenant=self.tenant)

    def direction_ended(self) -> None:
        if self._out.ended and self._in.ended and not (self._out.pending or
                                                         self._in.pending):
            self.close()

    def close(self) -> None:
        """Close both sockets (the client and the upstream peer see the end)."""
        if self.closed:
            return
        self.park()
        self.closed = True
        self.client.close()
        self.upstream.close()
        if self.on_close is not None:
            self.on_close(self)

    def let_go(self) -> None:
        """Close our descriptors after copies of them went to another kernel: the
        connections live on there, so the peers see nothing."""
        self.on_close = None
        self.close()

    def describe(self) -> dict[str, Any]:
        """One row of ``net.list``."""
        try:
            local: list[Any] | None = list(self.upstream.getsockname()[:2])
            peer: list[Any] | None = list(self.upstream.getpeername()[:2])
        except OSError:
            local = peer = None
        return {"sid": self.sid, "kind": "tcp", "local": local, "peer": peer,
                "listening": False, "kept": False, "relay": True,
                "pending": len(self._out.pending) + len(self._in.pending)}
