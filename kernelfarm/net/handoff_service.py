"""The kernel's end of the fd hand-off: take connections, check them, relay them, move them.

A front-end (``kernelfarm socks``) hands over a client connection with a destination and
the caller's token (wire in :mod:`kernelfarm.handoff`).  The kernel trusts none of it:
it checks that it owns the namespace, that the token may use it (``credentials``), and the
namespace's policy and socket limit (the same code as ``net.connect``), connects out, then
relays in its own loop (:mod:`kernelfarm.net.relay`).  Nothing here knows what protocol
the front-end speaks: the bytes to write first and the bytes that arrived early come with
the request.

Sockets and relays move with their namespace during live scaling: releasing a slot parks
them (no byte moves: a relay holds what it read, a socket's unread bytes and pending
connections stay in the host socket), ``hand_over`` sends their descriptors and state to
the kernel that acquired the slot, which takes them under the same ids; a rolled-back
move resumes them here.  Only a sibling kernel (a child of the same supervisor) may hand
them over, and the handing kernel waits until the new owner has taken every one (a
``barrier``), so a client sent there by the new slot table finds its sockets.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import psutil

from kernelfarm.errors import Moved, TryAgain, posix, to_wire
from kernelfarm import handoff
from kernelfarm.net.policy import parse_address
from kernelfarm.net.relay import CHUNK, Relay, RelayState
from kernelfarm.net.sockets import FarmSocket
from kernelfarm.partition import key_slot

if TYPE_CHECKING:
    from kernelfarm.net.namespace import Namespace
    from kernelfarm.net.subsystem import NetSubsystem

log = logging.getLogger(__name__)

Credentials = Callable[[str, Any], "str | None"]
"""``check(namespace, token)``: the token's tenant if it may use the namespace (``None``
when auth is off), else raises ``EACCES``."""

PARK_TIMEOUT = 60.0
"""Parked sockets and relays that no ``hand_over`` took and no rollback resumed are
closed then."""


HANDOVER_TIMEOUT = 5.0

FAILURE_BURST = 10
FAILURE_RATE = 2.0
"""Failed token checks one peer process may make: ``FAILURE_BURST`` at once, then
``FAILURE_RATE`` per second; past that its requests carrying a token are refused
``EAGAIN`` unchecked, so a guesser learns nothing faster, however it asks."""

PEERS_REMEMBERED = 256
"""Peer processes whose failure budget is kept; full budgets are forgotten first."""


RunKeyed = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""``run_keyed(key, work)``: ``work()`` run as a handler of partition key ``key`` runs."""


def run_here(key: str, work: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
    """A unicpu kernel's: its one loop holds every namespace, and nothing is locked."""
    return work()


class FailureBudget:
    """A token bucket of failed token checks for one peer process."""

    __slots__ = ("left", "stamp")

    def __init__(self) -> None:
        self.left = float(FAILURE_BURST)
        self.stamp = time.monotonic()

    def refill(self) -> float:
        now = time.monotonic()
        self.left = min(float(FAILURE_BURST), self.left + (now - self.stamp) * FAILURE_RATE)
        self.stamp = now
        return self.left

    def admit(self) -> None:
        """Refuse (``EAGAIN``) while no failure is left to spend."""
        left = self.refill()
        if left < 1:
            raise posix(errno.EAGAIN, f"too many failed token checks from this process: "
                        f"retry in {(1 - left) / FAILURE_RATE:.1f} s")

    def spend(self) -> None:
        self.left -= 1


def allow_any(ns: str, token: Any) -> str | None:
    """The check of a farm without tenants: every caller may use every namespace."""
    return None


def _field(message: dict[str, Any], name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise TypeError(f"hand-off field {name!r} must be {kind.__name__}")
    return value


def _first(message: dict[str, Any], name: str) -> bytes | dict[str, bytes]:
    """``first``/``second``: bytes, or the prefixes of an answer naming an address."""
    value = message.get(name, b"")
    if not isinstance(value, dict):
        return _chunk(message, name)
    if set(value) != {"ipv4", "ipv6"} or not all(
            isinstance(v, bytes) and len(v) <= handoff.MAX_PREFIX for v in value.values()):
        raise ValueError(f"hand-off field {name!r} must be bytes or a map of 'ipv4' and "
                         f"'ipv6' prefixes of at most {handoff.MAX_PREFIX} bytes")
    return value


def first_to_write(first: bytes | dict[str, bytes], sock: socket.socket,
                   peer: bool = False) -> bytes:
    """``first`` as written: a prefix gets the local (or ``peer``) address and port."""
    if isinstance(first, bytes):
        return first
    host, port = (sock.getpeername() if peer else sock.getsockname())[:2]
    prefix = first["ipv6" if sock.family == socket.AF_INET6 else "ipv4"]
    address = socket.inet_pton(sock.family, str(host).partition("%")[0])
    return prefix + address + int(port).to_bytes(2, "big")


def _chunk(message: dict[str, Any], name: str) -> bytes:
    value = message.get(name, b"")
    if not isinstance(value, bytes) or len(value) > CHUNK:
        raise ValueError(f"hand-off field {name!r} must be bytes of at most {CHUNK}")
    return value


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
        self.budgets: dict[int, FailureBudget] = {}
        self.parked: dict[int, list[tuple[str, Relay | FarmSocket]]] = {}

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
        for slot in list(self.parked):
            for _, item in self.parked.pop(slot):
                item.close()

    # -- requests -------------------------------------------------------------------------

    def check(self, ns: Any) -> str:
        """The namespace, if this kernel owns it (else ``MOVED``: ask the current map)."""
        if not isinstance(ns, str) or not ns:
            raise TypeError("hand-off field 'ns' must be a non-empty str")
        slot = key_slot(ns)
        if not self.net.ctx.owns(slot):
            raise Moved(f"slot {slot} is not served here", slot=slot)
        return ns

    def authorize(self, message: dict[str, Any], budget: FailureBudget
                  ) -> tuple[str, str | None]:
        """The namespace and the tenant whose token came with the request; a refused
        token spends one of the peer's ``budget`` of failures."""
        ns = self.check(message.get("ns"))
        budget.admit()
        try:
            return ns, self.credentials(ns, message.get("token"))
        except OSError as exc:
            if exc.errno == errno.EACCES:
                budget.spend()
            raise

    def budget(self, pid: int) -> FailureBudget:
        """The failure budget of peer process ``pid`` (shared by its connections)."""
        budget = self.budgets.get(pid)
        if budget is None:
            if len(self.budgets) >= PEERS_REMEMBERED:
                self.budgets = {p: b for p, b in self.budgets.items()
                                if b.refill() < FAILURE_BURST}
            budget = self.budgets[pid] = FailureBudget()
        return budget

    async def relay(self, message: dict[str, Any], fd: int,
                    budget: FailureBudget) -> dict[str, Any]:
        """``relay`` (connect out) or ``bind`` (accept one connection in): then relay the
        handed-over connection ``fd`` to it."""
        client = socket.socket(fileno=fd)
        try:
            ns, tenant = self.authorize(message, budget)
            first, early = _first(message, "first"), _chunk(message, "early")
            second = _first(message, "second") if message.get("op") == "bind" else None
        except BaseException:
            client.close()
            raise
        host, port = message.get("host"), message.get("port")

        def upstream(namespace: Namespace) -> Awaitable[tuple[int, socket.socket, bytes]]:
            if second is None:
                return self._connect(namespace, host, port, first)
            return self._accept_one(namespace, host, client, first, second)

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
            await namespace.connect(farm_sock.sid, host, port, self.net.timeout(None))
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
            answer = first_to_write(first, listener.opened())
            if client.send(answer) != len(answer):
                raise posix(errno.EIO, "the client did not take the first reply")
            deadline = namespace.loop.time() + self.net.timeout(None)
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
            self._unpark(farm_sock)

    def adopt(self, message: dict[str, Any], fds: list[int]) -> None:
        """Resume a relay another kernel handed over with its namespace."""
        client, upstream = (socket.socket(fileno=fd) for fd in fds)
        try:
            ns = self.check(_field(message, "ns", str))
            state = RelayState.from_wire(_field(message, "relay", dict))
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
            ns = self.check(_field(message, "ns", str))
            farm_sock = FarmSocket.moved_in(self.loop, _field(message, "socket", dict), sock)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        try:
            self.net.adopt_socket(ns, farm_sock)
        except BaseException:
            farm_sock.close()
            raise

    # -- moving with the namespace --------------------------------------------------------

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

    def _unpark(self, farm_sock: FarmSocket) -> None:
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
        self.budget = service.budget(self.pid)
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
                self.service.adopt(message, fds)
            else:
                self.service.adopt_socket(message, fds)
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
