"""The net subsystem: ``net.*`` methods over the namespaces this kernel owns.

This module adapts the wire to :class:`~kernelfarm.net.namespace.Namespace`: it checks
parameter types, turns caller timeouts into bounded ones, and ties sockets to the client
connection that made them.  A socket dies with its connection (the peer sees EOF) so a
crashed client leaks nothing, unless ``net.keep`` detached it — meant for listening
sockets that should outlive the process that set them up; a kept socket lives until
``net.close`` or until the kernel stops.  A namespace that moves to another kernel takes
its sockets along (``release_slot``, :mod:`kernelfarm.net.handoff_service`).

A socket belongs to the tenant that opened (or accepted) it: to every other tenant it
does not exist (``EBADF``, absent from ``net.list``), even in a namespace both are granted.
The admin, and everyone when auth is off, sees every socket.

Beyond the first contract's methods, all backwards compatible and documented in the
README: ``net.connect`` and ``net.send`` take an optional trailing ``timeout``;
``net.keep(ns, sid)``.

Net state is bounded per kernel: a namespace exists only while it holds a socket, each
holds at most ``net.max_sockets`` and all of them together ``net.max_kernel_sockets``.
The counters of the last :data:`RETIRED_COUNTERS` namespaces that emptied are kept for
``net.stats`` (and taken up again if the name comes back); older ones are forgotten, so
50,000 names used once cost nothing afterwards.
"""

from __future__ import annotations

import builtins
import functools
import inspect
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from kernelfarm.errors import InvalidParameter, preview
from kernelfarm.kernel.subsystem import (
    Connection, KernelContext, Method, Subsystem, with_conn_first,
)
from kernelfarm.keys import namespace_key
from kernelfarm.net.config import NetConfig
from kernelfarm.net.datapath import DataPath, as_bytes, integer
from kernelfarm.net.handoff_service import HandoffService
from kernelfarm.net.counters import Counters
from kernelfarm.net.namespace import Namespace, SocketCount
from kernelfarm.net.policy import Policy
from kernelfarm.net.sockets import KINDS, FarmSocket
from kernelfarm.partition import key_slot

MAX_NAMESPACE_LENGTH = 255
RETIRED_COUNTERS = 1024


class NetSubsystem(Subsystem):
    name = "net"

    def __init__(self, ctx: KernelContext) -> None:
        super().__init__(ctx)
        self.config: NetConfig = ctx.config.net
        self.policy = Policy(self.config, lambda: ctx.farm_endpoints)
        self.namespaces: dict[str, Namespace] = {}
        self.kernel_sockets = SocketCount(self.config.max_kernel_sockets)
        self._retired: OrderedDict[str, Counters] = OrderedDict()
        """Counters of namespaces that emptied, most recent last; at most RETIRED_COUNTERS."""
        self._by_slot: dict[int, set[str]] = {}  # so releasing a slot is not a full scan
        # id(connection) -> the (namespace, sid) it owns; one close callback per connection.
        self._owned: dict[int, set[tuple[str, int]]] = {}
        self._unclaimed: dict[tuple[str, int], FarmSocket] = {}
        """Sockets that moved here and no connection has named yet (``adopt_socket``)."""
        self.handoff = HandoffService(self)
        self.data = DataPath(self.config, self.namespaces, self._unclaimed, self._claim)
        """``net.send`` and ``net.recv``, and the bounds of timeouts and sizes."""
        self._lock_for: Callable[[str], Any] | None = None
        """The locked baseline's lock of a namespace (``use_locks``); None when unicpu."""

    def methods(self) -> list[Method]:
        key = namespace_key

        def wrap(handler: Callable[..., Any], *, takes_conn: bool = False
                 ) -> Callable[..., Any]:
            return self._callers_socket(self._accounted(handler), takes_conn)

        return [
            Method("net.socket", self._accounted(self.socket), key, writes=True,
                   wants_conn=True),
            Method("net.connect", wrap(self.connect), key, is_async=True, writes=True,
                   wants_conn=True),
            Method("net.bind", wrap(self.bind), key, writes=True, wants_conn=True),
            Method("net.listen", wrap(self.listen), key, writes=True, wants_conn=True),
            Method("net.accept", wrap(self.accept, takes_conn=True), key, is_async=True,
                   writes=True, wants_conn=True),
            Method("net.send", self.data.send, key, is_async=True, writes=True,
                   wants_conn=True),
            Method("net.recv", self.data.recv, key, is_async=True, writes=True,
                   wants_conn=True, reply_bytes=self.data.reply_bound),
            Method("net.sendto", wrap(self.sendto), key, is_async=True, writes=True,
                   wants_conn=True),
            Method("net.recvfrom", wrap(self.recvfrom), key, is_async=True, writes=True,
                   wants_conn=True, reply_bytes=self.data.reply_bound),
            Method("net.shutdown", wrap(self.shutdown), key, writes=True, wants_conn=True),
            Method("net.close", wrap(self.close_socket), key, writes=True, wants_conn=True),
            Method("net.keep", wrap(self.keep), key, writes=True, wants_conn=True),
            Method("net.stats", self.namespace_stats, key),
            Method("net.list", self.list, key, wants_conn=True),
        ]

    # -- handlers -----------------------------------------------------------------------------

    def socket(self, conn: Connection, ns: str, kind: Any) -> int:
        if type(kind) is not str or kind not in KINDS:  # a list is not even hashable
            raise InvalidParameter(f'kind must be "tcp" or "udp", got {preview(kind)}')
        namespace = self.open_namespace(ns)
        try:
            farm_sock = namespace.open(kind)
        except OSError:
            self.forget_if_empty(namespace)
            raise
        farm_sock.tenant = conn.session.tenant
        self._tie(conn, ns, farm_sock)
        return farm_sock.sid

    async def connect(self, ns: str, sid: Any, host: Any, port: Any,
                      timeout: Any = None) -> None:
        await self.data.namespace(ns).connect(sid, host, port, self.data.timeout(timeout))

    def bind(self, ns: str, sid: Any, host: Any, port: Any) -> list[Any]:
        return self.data.namespace(ns).bind(sid, host, port)

    def listen(self, ns: str, sid: Any, backlog: Any) -> None:
        self.data.namespace(ns).listen(sid, integer(backlog, "backlog", 0, 65535))

    async def accept(self, conn: Connection, ns: str, sid: Any,
                     timeout: Any = None) -> list[Any]:
        farm_sock, address = await self.data.namespace(ns).accept(
            sid, self.data.timeout(timeout))
        farm_sock.tenant = conn.session.tenant
        self._tie(conn, ns, farm_sock)
        return [farm_sock.sid, address]

    # net.send and net.recv: self.data (kernelfarm/net/datapath.py)

    async def sendto(self, ns: str, sid: Any, data: Any, host: Any, port: Any) -> int:
        return await self.data.namespace(ns).sendto(sid, as_bytes(data), host, port,
                                                    self.data.default_timeout)

    async def recvfrom(self, ns: str, sid: Any, size: Any,
                       timeout: Any = None) -> list[Any]:
        data, address = await self.data.namespace(ns).recvfrom(
            sid, self.data.size(size), self.data.timeout(timeout))
        return [data, address]

    def shutdown(self, ns: str, sid: Any, how: Any) -> None:
        self.data.namespace(ns).shutdown(sid, integer(how, "how", 0, 2))

    def close_socket(self, ns: str, sid: Any) -> None:
        namespace = self.data.namespace(ns)
        self._untie(ns, namespace.get(sid))
        namespace.close(sid)
        self.forget_if_empty(namespace)

    def keep(self, ns: str, sid: Any) -> None:
        farm_sock = self.data.namespace(ns).get(sid)
        self._untie(ns, farm_sock)
        farm_sock.kept = True

    def namespace_stats(self, ns: str) -> dict[str, Any]:
        namespace = self.namespaces.get(ns)
        if namespace is None:
            counters = self._retired.get(ns) if isinstance(ns, str) else None
            return (counters or Counters()).report(sockets_open=0)
        return namespace.stats()

    def list(self, conn: Connection, ns: str) -> list[dict[str, Any]]:
        namespace = self.namespaces.get(ns)
        return [] if namespace is None else namespace.list(conn.session.owner)

    # -- Subsystem ----------------------------------------------------------------------------

    def load_slots(self, slots: builtins.list[int]) -> None:
        """Slots coming back after a rolled-back move: their parked sockets run again."""
        for slot in slots:
            self.handoff.resume(slot)

    def release_slot(self, slot: int) -> None:
        """Park the sockets and relays of the slot's namespaces: ``hand_over`` moves them
        to the new owner, a rolled-back move resumes them here (``load_slots``)."""
        for name in self._by_slot.pop(slot, ()):
            namespace = self.namespaces[name]
            for farm_sock in namespace.sockets.values():
                self._untie(name, farm_sock)
                self._unclaimed.pop((name, farm_sock.sid), None)
            self.handoff.park(slot, namespace)
            self._drop(name)

    def adopt_socket(self, ns: str, farm_sock: FarmSocket) -> None:
        """A socket that moved here with its namespace (or came back after a rollback).

        Its client's connection was to the old kernel, so it arrives tied to nobody: the
        first call that names it from a connection of its tenant claims it (it dies with
        that connection from then on).  One nobody claims within ``net.max_timeout`` —
        its client died during the move — is closed, as its connection's end would have.
        A kept socket stays kept.
        """
        self.open_namespace(ns).adopt_socket(farm_sock)
        if not farm_sock.kept:
            self._unclaimed[(ns, farm_sock.sid)] = farm_sock
            self.ctx.loop.call_later(self.config.max_timeout, self._unclaimed_expired,
                                     ns, farm_sock)

    def hand_over(self, slots: builtins.list[int], target: str) -> int:  # .list: a method
        return self.handoff.hand_over(slots, target)

    def use_credentials(self, check: Callable[[str, str, Any], str | None]) -> None:
        self.handoff.credentials = lambda ns, token: check("net.relay", ns, token)

    def use_locks(self, lock_for: Callable[[str], Any]) -> None:
        """A namespace's sockets take its lock in their readiness callbacks, so that in the
        locked baseline any thread may serve a data call on them (``Namespace.guard``)."""
        self._lock_for = lock_for

    def stats(self) -> dict[str, Any]:
        namespaces = self.namespaces.values()
        relays = sum(len(ns.relays) for ns in namespaces)
        return {
            "namespaces": len(self.namespaces),
            "sockets": self.kernel_sockets.open + relays,
            "relays": relays,
            "bytes_in": sum(ns.counters.bytes_in for ns in namespaces),
            "bytes_out": sum(ns.counters.bytes_out for ns in namespaces),
        }

    def close(self) -> None:
        self.handoff.close()
        for name in list(self.namespaces):
            self._drop(name)
        self._by_slot.clear()
        self._retired.clear()
        self._unclaimed.clear()

    def open_namespace(self, name: str) -> Namespace:
        """The namespace, created on first use."""
        namespace = self.namespaces.get(name)
        return namespace if namespace is not None else self._create(name)

    # -- internals ----------------------------------------------------------------------------

    def _create(self, name: str) -> Namespace:
        if not name or len(name) > MAX_NAMESPACE_LENGTH:
            raise InvalidParameter(f"namespace names are 1..{MAX_NAMESPACE_LENGTH} characters")
        namespace = Namespace(name, self.ctx.loop, self.policy, self.config.max_sockets,
                              self.kernel_sockets, self._retired.pop(name, None))
        if self._lock_for is not None:
            namespace.guard = self._lock_for(name)
        namespace.on_empty = self.forget_if_empty
        self.namespaces[name] = namespace
        self._by_slot.setdefault(key_slot(name), set()).add(name)
        return namespace

    def forget_if_empty(self, namespace: Namespace) -> None:
        """A namespace holding no socket and no relay is dropped, counters and all: net
        state stays bounded by the sockets held, however many names clients use once.
        Called when a socket closes, when a relay ends (``Namespace.on_empty``), and when
        a hand-off fails to connect."""
        if namespace.sockets or namespace.relays \
                or self.namespaces.get(namespace.name) is not namespace:
            return
        del self.namespaces[namespace.name]
        retired = self._retired
        retired[namespace.name] = namespace.counters
        if len(retired) > RETIRED_COUNTERS:
            retired.popitem(last=False)
        slot = key_slot(namespace.name)
        names = self._by_slot.get(slot)
        if names is not None:
            names.discard(namespace.name)
            if not names:
                del self._by_slot[slot]

    def _drop(self, name: str) -> None:
        namespace = self.namespaces.pop(name, None)
        if namespace is None:
            return
        for farm_sock in namespace.sockets.values():
            self._untie(name, farm_sock)
        namespace.close_all()

    def _tie(self, conn: Connection, ns: str, farm_sock: FarmSocket) -> None:
        """Close ``farm_sock`` when ``conn`` goes away."""
        key = id(conn)
        farm_sock.owner = key
        owned = self._owned.get(key)
        if owned is not None:
            owned.add((ns, farm_sock.sid))
            return
        self._owned[key] = {(ns, farm_sock.sid)}
        conn.on_close(lambda: self._connection_closed(key))

    def _untie(self, ns: str, farm_sock: FarmSocket) -> None:
        owned = self._owned.get(farm_sock.owner) if farm_sock.owner is not None else None
        if owned is not None:
            owned.discard((ns, farm_sock.sid))
        farm_sock.owner = None

    def _connection_closed(self, key: int) -> None:
        for ns, sid in self._owned.pop(key, ()):
            namespace = self.namespaces.get(ns)
            if namespace is not None and sid in namespace.sockets:
                namespace.sockets[sid].owner = None
                namespace.close(sid)
                self.forget_if_empty(namespace)

    def _claim(self, conn: Connection, ns: Any, sid: Any) -> None:
        """Tie a moved socket to the first connection of its tenant that names it."""
        try:
            farm_sock = self._unclaimed.get((ns, sid))
        except TypeError:
            return  # an unhashable parameter: the handler says what is wrong with it
        owner = conn.session.owner
        if farm_sock is None or owner is not None and farm_sock.tenant != owner:
            return
        del self._unclaimed[(ns, sid)]
        self._tie(conn, ns, farm_sock)

    def _unclaimed_expired(self, ns: str, farm_sock: FarmSocket) -> None:
        if self._unclaimed.get((ns, farm_sock.sid)) is not farm_sock:
            return  # claimed, closed, or moved on
        del self._unclaimed[(ns, farm_sock.sid)]
        namespace = self.namespaces.get(ns)
        if namespace is not None and namespace.sockets.get(farm_sock.sid) is farm_sock:
            namespace.close(farm_sock.sid)
            self.forget_if_empty(namespace)

    def _callers_socket(self, handler: Callable[..., Any], takes_conn: bool
                        ) -> Callable[..., Any]:
        """Run ``handler(ns, sid, ...)`` only on a socket of the caller's tenant: another
        tenant's socket is ``EBADF``, the same answer as for a socket that does not exist."""
        def run(conn: Connection, ns: Any, sid: Any, *rest: Any) -> Any:
            if self._unclaimed:  # sockets moved here during live scaling, rarely
                self._claim(conn, ns, sid)
            owner = conn.session.owner
            if owner is not None:
                namespace = self.namespaces.get(ns)
                if namespace is not None:
                    farm_sock = namespace.sockets.get(sid)
                    if farm_sock is not None and farm_sock.tenant != owner:
                        raise namespace.missing(sid)
            if takes_conn:
                return handler(conn, ns, sid, *rest)
            return handler(ns, sid, *rest)
        if takes_conn:
            return functools.wraps(handler)(run)
        return with_conn_first(run, handler)

    def _accounted(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Count each failed call in its namespace: ``denied`` for policy, else ``errors``.

        The namespace is the first ``str`` parameter (``conn`` may come before it).
        """
        def count(params: tuple[Any, ...], exc: OSError) -> None:
            self.data.count_failure(next((p for p in params if isinstance(p, str)), None), exc)

        async def later(awaitable: Awaitable[Any], params: tuple[Any, ...]) -> Any:
            try:
                return await awaitable
            except OSError as exc:
                count(params, exc)
                raise

        if inspect.iscoroutinefunction(handler):
            @functools.wraps(handler)
            def run_async(*params: Any) -> Any:
                # Called now, not in the task: a wrong parameter count fails at the call.
                return later(handler(*params), params)
            return run_async

        @functools.wraps(handler)
        def run(*params: Any) -> Any:
            try:
                return handler(*params)
            except OSError as exc:
                count(params, exc)
                raise
        return run
