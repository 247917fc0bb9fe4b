"""The kernel's end of the fd hand-off: take connections, check them, relay them.

A front-end (``kernelfarm socks``) hands over a client connection with a destination and
the caller's token (wire in :mod:`kernelfarm.handoff`).  The kernel trusts none of it:
it checks that it owns the namespace, that the token may use it (``credentials``, with a
budget of failures per peer process: :mod:`.handoff_budget`), and the namespace's policy
and socket limit (the same code as ``net.connect``), connects out, then relays in its own
loop (:mod:`kernelfarm.net.relay`).  Nothing here knows what protocol the front-end
speaks: the bytes to write first and the bytes that arrived early come with the request.

The parts, one job each: this service (the listening socket and the requests that start
relays), :mod:`.handoff_peer` (one connection: packets in, replies out),
:mod:`.handoff_fields` (reading a request's fields) and :mod:`.handoff_moves` (sockets
and relays moving with their namespace during live scaling).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from kernelfarm.errors import Moved, TryAgain, posix
from kernelfarm.net.handoff_budget import FailureBudget, FailureBudgets
from kernelfarm.net.handoff_fields import answer, chunk, first_to_write, owned
from kernelfarm.net.handoff_moves import Moves
from kernelfarm.net.handoff_peer import HandoffPeer
from kernelfarm.net.policy import parse_address
from kernelfarm.net.relay import Relay, RelayState
from kernelfarm.net.sockets import FarmSocket
from kernelfarm.partition import key_slot

if TYPE_CHECKING:
    from kernelfarm.net.namespace import Namespace
    from kernelfarm.net.subsystem import NetSubsystem

log = logging.getLogger(__name__)

Credentials = Callable[[str, Any], "str | None"]
"""``check(namespace, token)``: the token's tenant if it may use the namespace (``None``
when auth is off), else raises ``EACCES``."""


RunKeyed = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""``run_keyed(key, work)``: ``work()`` run as a handler of partition key ``key`` runs."""


def run_here(key: str, work: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
    """A unicpu kernel's: its one loop holds every namespace, and nothing is locked."""
    return work()


def allow_any(ns: str, token: Any) -> str | None:
    """The check of a farm without tenants: every caller may use every namespace."""
    return None


class HandoffService:
    """Serves the kernel's hand-off socket; one per kernel, owned by its net subsystem."""

    def __init__(self, net: NetSubsystem) -> None:
        self.net = net
        self.loop = net.ctx.loop
        self.credentials: Credentials = allow_any
        self.listener: socket.socket | None = None
        self.run_keyed: RunKeyed = run_here
        """Runs the part of a hand-off that changes a namespace where that namespace's
        handlers run: the locked baseline serves hand-offs on its main thread for
        namespaces living on every thread's loop, under their locks."""
        self.peers: set[HandoffPeer] = set()
        self.budgets = FailureBudgets()
        self.moves = Moves(net)

    # -- serving --------------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        """Accept on ``listener``, on this kernel's loop."""
        listener.setblocking(False)
        self.listener = listener
        self.loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("hand-off accept failed: %s", exc)
            return
        self.peers.add(HandoffPeer(self, conn))

    def close(self) -> None:
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener = None  # the supervisor's socket: a restarted kernel serves it
        for peer in list(self.peers):
            peer.close()
        self.moves.close()

    # -- requests -------------------------------------------------------------------------

    def authorize(self, message: dict[str, Any], budget: FailureBudget
                  ) -> tuple[str, str | None]:
        """The namespace and the tenant whose token came with the request; a refused
        token spends one of the peer's ``budget`` of failures."""
        ns = owned(self.net.ctx.owns, message.get("ns"))
        budget.admit()
        try:
            return ns, self.credentials(ns, message.get("token"))
        except OSError as exc:
            if exc.errno == errno.EACCES:
                budget.spend()
            raise

    async def relay(self, message: dict[str, Any], fd: int,
                    budget: FailureBudget) -> dict[str, Any]:
        """``relay`` (connect out) or ``bind`` (accept one connection in): then relay the
        handed-over connection ``fd`` to it."""
        client = socket.socket(fileno=fd)
        try:
            ns, tenant = self.authorize(message, budget)
            to_write, early = answer(message, "first"), chunk(message, "early")
            second = answer(message, "second") if message.get("op") == "bind" else None
        except BaseException:
            client.close()
            raise
        host, port = message.get("host"), message.get("port")

        def upstream(namespace: Namespace) -> Awaitable[tuple[int, socket.socket, bytes]]:
            if second is None:
                return self._connect(namespace, host, port, to_write)
            return self._accept_one(namespace, host, client, to_write, second)

        reply: dict[str, Any] = await self.run_keyed(
            ns, lambda: self._relay(ns, tenant, client, upstream, early))
        return reply

    async def _relay(self, ns: str, tenant: str | None, client: socket.socket,
                     upstream_of: Callable[[Namespace],
                                           Awaitable[tuple[int, socket.socket, bytes]]],
                     early: bytes) -> dict[str, Any]:
        """The namespace's part of a hand-off, where its state lives."""
        namespace: Namespace | None = None
        try:
            namespace = self.net.open_namespace(ns)
            sid, upstream, to_client = await upstream_of(namespace)
            if self.net.namespaces.get(ns) is not namespace:
                upstream.close()
                raise Moved(f"namespace {ns!r} moved while connecting", slot=key_slot(ns))
        except BaseException as exc:
            client.close()
            if namespace is not None:
                if isinstance(exc, OSError):
                    namespace.counters.count_failure(exc)
                self.net.forget_if_empty(namespace)  # opened for this hand-off alone
            raise
        relay = Relay(namespace.loop, client, upstream,
                      RelayState(sid, to_upstream=early, to_client=to_client, tenant=tenant),
                      namespace.counters)
        namespace.adopt_relay(relay)
        relay.start()
        return {"sid": relay.sid, "local": list(upstream.getsockname()[:2])}

    async def _connect(self, namespace: Namespace, host: Any, port: Any,
                       first: bytes | dict[str, bytes]) -> tuple[int, socket.socket, bytes]:
        """``relay``: a socket of the namespace connected to ``host:port``."""
        farm_sock = namespace.open("tcp")
        try:
            await namespace.connect(farm_sock.sid, host, port, self.net.data.default_timeout)
            upstream = farm_sock.detach()
        finally:
            self._discard(namespace, farm_sock)
        return farm_sock.sid, upstream, first_to_write(first, upstream)

    async def _accept_one(self, namespace: Namespace, host: Any, client: socket.socket,
                          first: bytes | dict[str, bytes], second: bytes | dict[str, bytes]
                          ) -> tuple[int, socket.socket, bytes]:
        """``bind``: listen in the namespace (loopback for a loopback ``host``, else the
        wildcard, as policy allows), write ``first`` naming the listening address, then
        take one connection from ``host`` (any, if unspecified) within the default
        timeout; ``second`` names its peer."""
        expected, _ = parse_address(host, 0, bind=True)
        if expected.is_loopback:
            local = "127.0.0.1" if expected.version == 4 else "::1"
        else:
            local = "0.0.0.0" if expected.version == 4 else "::"
        listener = namespace.open("tcp")
        try:
            namespace.bind(listener.sid, local, 0)
            namespace.listen(listener.sid, 1)
            reply = first_to_write(first, listener.opened())
            if client.send(reply) != len(reply):
                raise posix(errno.EIO, "the client did not take the first reply")
            deadline = namespace.loop.time() + self.net.data.default_timeout
            while True:
                try:
                    accepted, address = await namespace.accept(
                        listener.sid, deadline - namespace.loop.time())
                except TryAgain:  # the namespace moves: the first reply cannot be taken back
                    raise posix(errno.ECONNABORTED, "the namespace moved during BIND") from None
                upstream = accepted.detach()
                namespace.close(accepted.sid)
                if expected.is_unspecified or ipaddress.ip_address(address[0]) == expected:
                    break
                upstream.close()  # not the host the client named
        finally:
            self._discard(namespace, listener)
        return listener.sid, upstream, first_to_write(second, upstream, peer=True)

    def _discard(self, namespace: Namespace, farm_sock: FarmSocket) -> None:
        """Close a socket a hand-off made for itself."""
        if farm_sock.sid in namespace.sockets:
            namespace.close(farm_sock.sid)
        else:  # parked by a move meanwhile: no client of ours to follow it
            self.moves.unpark(farm_sock)

    # -- moving with the namespace (:mod:`.handoff_moves`) --------------------------------

    def park(self, slot: int, namespace: Namespace) -> None:
        self.moves.park(slot, namespace)

    def resume(self, slot: int) -> None:
        self.moves.resume(slot)

    def hand_over(self, slots: list[int], target: str) -> int:
        return self.moves.hand_over(slots, target)
