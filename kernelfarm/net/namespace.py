"""A namespace: the sockets one tenant holds in this kernel, its limits and its counters.

Socket ids are random (unguessable: another client cannot name a socket it was not
given) and never reused while open, so a client holding a stale id gets ``EBADF`` instead
of someone else's socket, with odds of 2**-51 per try.  Every check of the policy happens here,
before the host socket is asked to do anything.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import secrets
from typing import Any, Callable

from kernelfarm.errors import InvalidParameter, posix
from kernelfarm.net.counters import Counters
from kernelfarm.net.policy import IPAddress, Policy, parse_address
from kernelfarm.net.relay import Relay
from kernelfarm.net.sockets import FarmSocket, wire_address


class SocketCount:
    """The sockets of every namespace of one kernel, against ``net.max_kernel_sockets``:
    without it, three namespaces of ``net.max_sockets`` each could take a kernel's
    descriptors.  Shared by the kernel's namespaces; a unicpu kernel's, so no lock."""

    __slots__ = ("maximum", "open")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.open = 0


SID_LIMIT = 2**51
"""Sids stay below 2**51: exact as a double, for clients in languages without int64."""


class Namespace:
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, policy: Policy,
                 max_sockets: int, kernel_sockets: SocketCount,
                 counters: Counters | None = None) -> None:
        self.name = name
        self.loop = loop
        self.policy = policy
        self.max_sockets = max_sockets
        self.kernel_sockets = kernel_sockets
        self.sockets: dict[int, FarmSocket] = {}
        self.relays: dict[int, Relay] = {}
        """Connections handed to this kernel and relayed in its loop (see ``relay``); each
        counts as one socket of the namespace."""
        self.counters = counters or Counters()
        self.guard: Any = None
        """The lock its handlers run under in the locked baseline (None when unicpu): every
        socket of the namespace holds it in its readiness callbacks (``FarmSocket.guard``)."""
        self.on_empty: Callable[[Namespace], None] | None = None
        """Told when the last relay ends and no socket is left (a namespace made by a
        SOCKS hand-off holds only relays): the subsystem then frees the namespace."""

    def _check_room(self) -> None:
        if len(self.sockets) + len(self.relays) >= self.max_sockets:
            raise posix(errno.EMFILE, f"namespace {self.name!r} holds net.max_sockets="
                        f"{self.max_sockets} sockets")
        kernel = self.kernel_sockets
        if kernel.open >= kernel.maximum:
            raise posix(errno.EMFILE, f"this kernel holds net.max_kernel_sockets="
                        f"{kernel.maximum} sockets")

    def _new_sid(self) -> int:
        while True:
            sid = secrets.randbelow(SID_LIMIT - 1) + 1
            if sid not in self.sockets:
                return sid

    def _add(self, farm_sock: FarmSocket) -> FarmSocket:
        farm_sock.guard = self.guard
        self.sockets[farm_sock.sid] = farm_sock
        self.kernel_sockets.open += 1
        self.counters.sockets_opened += 1
        return farm_sock

    def get(self, sid: Any) -> FarmSocket:
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise InvalidParameter(f"socket id must be an int, got {type(sid).__name__}")
        farm_sock = self.sockets.get(sid)
        if farm_sock is None:
            raise self.missing(sid)
        return farm_sock

    def missing(self, sid: Any) -> OSError:
        """The one answer for a sid the caller may not use: closed, moved, or not its."""
        return posix(errno.EBADF, f"no socket {sid} in namespace {self.name!r} (closed, or "
                     "its namespace moved to another kernel)")

    # -- operations, in the order of the README's net methods ------------------------------

    def open(self, kind: str) -> FarmSocket:
        self._check_room()
        return self._add(FarmSocket(self.loop, self._new_sid(), kind, self.counters))

    def bind(self, sid: int, host: Any, port: Any) -> list[Any]:
        farm_sock = self.get(sid)
        address, port = parse_address(host, port, bind=True)
        self.policy.check_bind(address)
        return farm_sock.bind(address, port)

    async def connect(self, sid: int, host: Any, port: Any, timeout: float) -> None:
        farm_sock = self.get(sid)
        address, port = parse_address(host, port)
        self.policy.check_destination(address, port)
        await farm_sock.connect(address, port, timeout)
        self.counters.connects += 1

    def listen(self, sid: int, backlog: int) -> None:
        self.get(sid).listen(backlog)

    async def accept(self, sid: int, timeout: float) -> tuple[FarmSocket, list[Any]]:
        listener = self.get(sid)
        sock, address = await listener.accept(timeout, self._check_room)
        self.counters.accepts += 1
        return self._add(FarmSocket.accepted(self.loop, self._new_sid(), sock,
                                             self.counters)), \
            wire_address(address)

    async def sendto(self, sid: int, data: bytes, host: Any, port: Any,
                     timeout: float) -> int:
        farm_sock = self.get(sid)
        if farm_sock.kind != "udp":
            raise posix(errno.EOPNOTSUPP, f"socket {sid} is TCP: use net.send")
        address, port = parse_address(host, port)
        self.policy.check_destination(address, port)
        if not farm_sock.is_bound():
            self._bind_for_sending(farm_sock, address)
        return await farm_sock.sendto(data, address, port, timeout)

    async def recvfrom(self, sid: int, size: int, timeout: float) -> tuple[bytes, list[Any]]:
        farm_sock = self.get(sid)
        if farm_sock.kind != "udp":
            raise posix(errno.EOPNOTSUPP, f"socket {sid} is TCP: use net.recv")
        data, address = await farm_sock.recvfrom(size, timeout)
        return data, wire_address(address)

    def shutdown(self, sid: int, how: int) -> None:
        self.get(sid).shutdown(how)

    def close(self, sid: int) -> None:
        self.sockets.pop(self.get(sid).sid).close()
        self.kernel_sockets.open -= 1

    def close_all(self) -> None:
        for farm_sock in self.sockets.values():
            farm_sock.close()
        self.kernel_sockets.open -= len(self.sockets)
        self.sockets.clear()
        for relay in list(self.relays.values()):
            relay.close()

    def adopt_relay(self, relay: Relay) -> None:
        """Make ``relay`` one of this namespace's sockets, counted and listed."""
        if relay.sid in self.sockets or relay.sid in self.relays:
            relay.sid = self._new_sid()
        self.relays[relay.sid] = relay
        relay.counters = self.counters
        relay.on_close = self._relay_closed

    def _relay_closed(self, relay: Relay) -> None:
        self.relays.pop(relay.sid, None)
        if self.on_empty is not None and not self.relays and not self.sockets:
            self.on_empty(self)

    def take_relays(self) -> list[Relay]:
        """Park and detach every relay (its namespace is leaving this kernel)."""
        relays = list(self.relays.values())
        self.relays.clear()
        for relay in relays:
            relay.park()
            relay.on_close = None
        return relays

    def take_sockets(self) -> list[FarmSocket]:
        """Park and detach every socket (its namespace is leaving this kernel)."""
        sockets = list(self.sockets.values())
        self.sockets.clear()
        self.kernel_sockets.open -= len(sockets)
        for farm_sock in sockets:
            farm_sock.park()
        return sockets

    def adopt_socket(self, farm_sock: FarmSocket) -> None:
        """Take a socket that moved here with this namespace, under its own sid (its
        client goes on naming it so).  It is counted but not refused: the limits were
        checked when it was made, and refusing it now would close a client's socket."""
        if farm_sock.sid in self.sockets or farm_sock.sid in self.relays:
            # A clash of two random 51-bit sids: no way to tell them apart.
            raise posix(errno.EEXIST, f"socket {farm_sock.sid} of {self.name!r} exists here")
        farm_sock.counters = self.counters
        farm_sock.guard = self.guard
        self.sockets[farm_sock.sid] = farm_sock
        self.kernel_sockets.open += 1

    def stats(self) -> dict[str, Any]:
        return self.counters.report(len(self.sockets) + len(self.relays), len(self.relays))

    def list(self, owner: str | None = None) -> list[dict[str, Any]]:
        """Open sockets and relays: all of them, or those of tenant ``owner``."""
        rows = [s.describe() for s in self.sockets.values()
                if owner is None or s.tenant == owner]
        return rows + [r.describe() for r in self.relays.values()
                       if owner is None or r.tenant == owner]

    def _bind_for_sending(self, farm_sock: FarmSocket, destination: IPAddress) -> None:
        """Bind an unbound UDP socket before its first datagram, as policy allows.

        Left to the host, the first ``sendto`` binds the wildcard address, and the socket
        would then receive datagrams from every network: a bind nobody checked.  Bind the
        loopback address for a loopback destination, else the wildcard — both through
        ``bind_allow``.
        """
        local: ipaddress.IPv4Address | ipaddress.IPv6Address
        if destination.version == 4:
            local = ipaddress.IPv4Address("127.0.0.1" if destination.is_loopback else "0.0.0.0")
        else:
            local = ipaddress.IPv6Address("::1" if destination.is_loopback else "::")
        self.policy.check_bind(local)
        farm_sock.host_socket(local).bind((str(local), 0))

