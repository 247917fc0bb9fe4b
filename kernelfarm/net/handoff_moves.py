"""Sockets and relays that move with their namespace during live scaling.

Releasing a slot parks its namespaces' sockets and relays here (no byte moves: a relay
holds what it read, a socket's unread bytes and pending connections stay in the host
socket); ``hand_over`` sends their descriptors and state to the kernel that acquired the
slot, which takes them (``adopt``, ``adopt_socket``) under the same ids; a rolled-back move
resumes them here, or -- if they went already -- the new owner hands them back.  The
handing kernel waits until the new owner has taken every one (a ``barrier``), so a client
sent there by the new slot table finds its sockets.  What neither a hand-over took nor a
rollback resumed is closed after ``PARK_TIMEOUT``.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from kernelfarm import handoff
from kernelfarm.net.handoff_fields import owned, typed
from kernelfarm.net.relay import Relay, RelayState
from kernelfarm.net.sockets import FarmSocket

if TYPE_CHECKING:
    from kernelfarm.net.namespace import Namespace
    from kernelfarm.net.subsystem import NetSubsystem

log = logging.getLogger(__name__)

PARK_TIMEOUT = 60.0
"""Parked sockets and relays that no ``hand_over`` took and no rollback resumed are
closed then."""


HANDOVER_TIMEOUT = 5.0


class Moves:
    """One kernel's sockets and relays on the move: parked ones, by slot, and the
    hand-overs out and in."""

    def __init__(self, net: NetSubsystem) -> None:
        self.net = net
        self.loop = net.ctx.loop
        self.parked: dict[int, list[tuple[str, Relay | FarmSocket]]] = {}

    def park(self, slot: int, namespace: Namespace) -> None:
        """The namespace leaves this kernel: hold its sockets and relays still until
        ``hand_over``."""
        items: list[tuple[str, Relay | FarmSocket]] = [
            (namespace.name, relay) for relay in namespace.take_relays()]
        items += [(namespace.name, farm_sock) for farm_sock in namespace.take_sockets()]
        if not items:
            return
        self.parked.setdefault(slot, []).extend(items)
        self.loop.call_later(PARK_TIMEOUT, self._expire, slot, items)

    def resume(self, slot: int) -> None:
        """The slot came back (a rolled-back move): its parked sockets run here again."""
        for name, item in self.parked.pop(slot, ()):
            if isinstance(item, Relay):
                self.net.open_namespace(name).adopt_relay(item)
                item.start()
            else:
                self.net.adopt_socket(name, item)

    def hand_over(self, slots: list[int], target: str) -> int:
        """Send the parked sockets and relays of ``slots`` to the kernel serving hand-offs
        at ``target``; return once it has taken them all.

        Blocking, with a deadline: the supervisor calls this between two steps of a move,
        when only the moving slots wait.  Descriptors are duplicated into the packet by
        the host, so closing ours afterwards leaves the connections open.
        """
        moving = [(slot, item) for slot in slots for item in self.parked.get(slot, ())]
        if not moving:
            return 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(HANDOVER_TIMEOUT)
            sock.connect(target)
            for slot, (name, item) in moving:
                if isinstance(item, Relay):
                    packet = handoff.pack({"op": "adopt", "ns": name,
                                           "relay": item.state().to_wire()})
                    fds = [item.client.fileno(), item.upstream.fileno()]
                else:
                    packet = handoff.pack({"op": "adopt_socket", "ns": name,
                                           "socket": item.state()})
                    fds = [] if item.sock is None else [item.sock.fileno()]
                socket.send_fds(sock, [packet], fds)
                self.parked[slot].remove((name, item))
                if not self.parked[slot]:
                    del self.parked[slot]
                item.let_go()
            try:
                sock.send(handoff.pack({"op": "barrier", "id": 0}))
                handoff.receive(sock)
            except OSError as exc:
                # Everything went: failing the step now would only strand it there.
                log.warning("the kernel at %s did not confirm %d hand-offs: %s", target,
                            len(moving), exc)
        return len(moving)

    def unpark(self, farm_sock: FarmSocket) -> None:
        """Close a parked socket that nobody will take (its hand-off made it for itself)."""
        for items in self.parked.values():
            for item in items:
                if item[1] is farm_sock:
                    items.remove(item)
                    farm_sock.close()
                    return

    def _expire(self, slot: int, items: list[tuple[str, Relay | FarmSocket]]) -> None:
        parked = self.parked.get(slot)
        if parked is None:
            return
        for item in items:
            if item in parked:
                parked.remove(item)
                item[1].close()
        if not parked:
            del self.parked[slot]

    def adopt(self, message: dict[str, Any], fds: list[int]) -> None:
        """Resume a relay another kernel handed over with its namespace."""
        client, upstream = (socket.socket(fileno=fd) for fd in fds)
        try:
            ns = owned(self.net.ctx.owns, typed(message, "ns", str))
            state = RelayState.from_wire(typed(message, "relay", dict))
            namespace = self.net.open_namespace(ns)
        except BaseException:
            client.close()
            upstream.close()
            raise
        relay = Relay(self.loop, client, upstream, state, namespace.counters)
        namespace.adopt_relay(relay)
        relay.start()

    def adopt_socket(self, message: dict[str, Any], fds: list[int]) -> None:
        """Take a socket another kernel handed over with its namespace (``fds``: its host
        socket, none if it was neither bound nor connected)."""
        sock = socket.socket(fileno=fds[0]) if fds else None
        try:
            ns = owned(self.net.ctx.owns, typed(message, "ns", str))
            farm_sock = FarmSocket.moved_in(self.loop, typed(message, "socket", dict), sock)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        try:
            self.net.adopt_socket(ns, farm_sock)
        except BaseException:
            farm_sock.close()
            raise

    def close(self) -> None:
        for slot in list(self.parked):
            for _, item in self.parked.pop(slot):
                item.close()
