"""The gate every server checks its connections with: the control port and each kernel.

A connection holds a :class:`Session`, and a session *is* the connection's permissions:
the method table it may call (an unauthenticated connection's table holds only
``auth.hello`` and the public methods), and the grants its keys are checked against, with
a cache of ``(method, key) -> allowed``.  Sessions are shared by every connection of a
tenant in one process, so the glob matching is paid once per tenant and key, and a call
costs one dict lookup more than with auth off.  A new table builds new sessions and
re-points every open connection in one pass: a tenant removed, or whose token was rotated,
is left with the *revoked* session, whose answer to everything but ``auth.hello`` is
``EACCES``.
"""

from __future__ import annotations

import asyncio
import errno
import time
import weakref
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Awaitable, Generic, Iterable, Mapping, TypeVar

from kernelfarm.auth.table import Tenant, TenantTable
from kernelfarm.errors import NotAuthenticated, UnknownMethod, posix, preview, to_wire
from kernelfarm.rpc.meter import Usage

T = TypeVar("T")

HELLO = "auth.hello"

GRANT_SPACES = {"fs": "volumes", "net": "namespaces"}
"""Which grants a keyed method's key is checked against, by the method's subsystem.  Keyed
methods of any other subsystem are the admin's only."""

CACHE_LIMIT = 65536
"""Entries a session's ``(method, key)`` cache holds before it starts afresh."""
CACHED_KEY_CHARS = 128
"""Longer keys are matched every time, not cached: the cache stays bounded in bytes too."""

FIRST_PENALTY_S = 0.05
MAX_PENALTY_S = 1.0
"""A wrong token's answer waits 0.05 s, doubling per failure on that connection up to 1 s;
every later hello on the connection waits its turn, so guessing costs time per try."""

MAX_TOKEN_CHARS = 1024


class Grants:
    """A tenant's volume and namespace patterns, and what they answered so far."""

    def __init__(self, volumes: tuple[str, ...], namespaces: tuple[str, ...]) -> None:
        self.patterns = {"volumes": volumes, "namespaces": namespaces}
        self._cache: dict[tuple[str, str], bool] = {}

    def allows(self, method: str, key: str) -> bool:
        cache = self._cache
        allowed = cache.get((method, key))
        if allowed is None:
            space = GRANT_SPACES.get(method.partition(".")[0])
            patterns = self.patterns[space] if space is not None else ()
            allowed = any(fnmatchcase(key, p) for p in patterns)
            if len(key) <= CACHED_KEY_CHARS:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[(method, key)] = allowed
        return allowed


@dataclass(eq=False)
class Session(Generic[T]):
    """What a connection may do; shared by all connections of one tenant."""

    tenant: str | None
    admin: bool
    methods: Mapping[str, T]
    grants: Grants | None = None
    """``None``: every key (the admin, or auth switched off)."""
    token_hash: str | None = field(default=None, repr=False)
    refusal: dict[str, Any] | None = None
    """The error for a known method not in ``methods``; ``None`` = needs the admin."""
    usage: Usage = field(default_factory=Usage, repr=False)
    """What the connections holding this session cost (the tenant's, kept across new
    tables; connections with no tenant share one)."""

    @property
    def owner(self) -> str | None:
        """Whose sockets this session sees: ``None`` = everyone's (admin, auth off)."""
        return self.tenant if self.grants is not None else None


@dataclass
class Attempts:
    failures: int = 0
    not_before: float = 0.0


class Gate(Generic[T]):
    """Sessions for one server process, built from the tenant table."""

    def __init__(self, required: bool, table: TenantTable, *, public: Mapping[str, T],
                 tenant: Mapping[str, T], admin: Mapping[str, T]) -> None:
        self.required = required
        self.known = admin
        self._tenant_methods = tenant
        self.anonymous = Usage()
        """Traffic of connections bound to no tenant (before hello, revoked, auth off)."""
        self.usage: dict[str, Usage] = {}
        """Each tenant's usage, by name: a new table keeps it (a rotated token too)."""
        self.unauthenticated: Session[T] = Session(
            None, False, public, refusal=NotAuthenticated(
                "not authenticated: call auth.hello(token) first").to_wire(),
            usage=self.anonymous)
        self.revoked: Session[T] = Session(None, False, public, refusal=to_wire(posix(
            errno.EACCES, "this connection's tenant was removed or its token rotated; "
            "call auth.hello again")), usage=self.anonymous)
        self.trusted: Session[T] = Session(None, True, admin, usage=self.anonymous)
        """Auth switched off, or the supervisor's own channel: every method, every key."""
        self.table = TenantTable()
        self.sessions: dict[str, Session[T]] = {}
        self._attempts: weakref.WeakKeyDictionary[Any, Attempts] = \
            weakref.WeakKeyDictionary()
        self.update(table, ())

    def _session(self, tenant: Tenant) -> Session[T]:
        usage = self.usage.get(tenant.name) or Usage()
        if tenant.admin:
            return Session(tenant.name, True, self.known, token_hash=tenant.token_hash,
                           usage=usage)
        return Session(tenant.name, False, self._tenant_methods,
                       Grants(tenant.volumes, tenant.namespaces), tenant.token_hash,
                       usage=usage)

    def usage_report(self) -> dict[str, dict[str, int]]:
        """Each tenant's usage that is not all zero; ``""`` for no tenant."""
        report = {name: usage.report() for name, usage in self.usage.items() if usage}
        if self.anonymous:
            report[""] = self.anonymous.report()
        return report

    def unproven(self, conn: Any) -> bool:
        """``conn`` has not said who it is (yet), while it must: the first to go when its
        listener is full (:class:`kernelfarm.rpc.server.ConnectionLimit`)."""
        return conn.session is self.unauthenticated and self.required

    def first_session(self) -> Session[T]:
        """A new connection's session: it must say who it is, unless auth is off."""
        return self.unauthenticated if self.required else self.trusted

    def refuse(self, session: Session[T], method: str) -> dict[str, Any]:
        """The error for a method ``session`` may not call: NOAUTH, EACCES or ENOSYS."""
        if method not in self.known:
            return UnknownMethod(f"no method {preview(method)}").to_wire()
        if session.refusal is not None:
            return session.refusal
        return to_wire(posix(errno.EACCES, f"{method} needs the admin token"))

    @staticmethod
    def denied(method: str, key: str) -> dict[str, Any]:
        space = GRANT_SPACES.get(method.partition(".")[0], "keys")
        return to_wire(posix(errno.EACCES, f"{preview(key)} is not in this tenant's {space}"))

    def update(self, table: TenantTable, conns: Iterable[Any]) -> bool:
        """Adopt ``table`` (unless older) and re-point every connection in ``conns``."""
        if table.version < self.table.version:
            return False
        self.table = table
        self.sessions = {name: self._session(t) for name, t in table.tenants.items()}
        # A removed tenant's usage goes with it: the names counted stay the table's.
        self.usage = {name: session.usage for name, session in self.sessions.items()}
        for conn in list(conns):
            old = conn.session
            if old.token_hash is None:
                continue  # not authenticated, revoked, or trusted: nothing to re-check
            new = self.sessions.get(old.tenant)
            conn.session = new if new is not None and new.token_hash == old.token_hash \
                else self.revoked
        return True

    def credentials(self, method: str, key: str, token: Any) -> str | None:
        """A token that arrives with a request instead of a hello (a front-end's fd
        hand-off): its tenant if it may use ``key`` for ``method``, else ``EACCES``;
        ``None`` when auth is off."""
        if not self.required:
            return None
        tenant = None
        if isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_CHARS:
            tenant = self.table.identify(token)
        session = self.sessions.get(tenant.name) if tenant is not None else None
        if session is None:
            raise posix(errno.EACCES, "no tenant has this token")
        if session.grants is not None and not session.grants.allows(method, key):
            raise posix(errno.EACCES, f"{preview(key)} is not in this tenant's "
                        f"{GRANT_SPACES.get(method.partition('.')[0], 'keys')}")
        return session.tenant

    def hello(self, conn: Any, token: Any) -> Awaitable[dict[str, Any]]:
        """``auth.hello(token)``: bind ``conn`` to the token's tenant, or ``EACCES``.

        A right token binds the connection at once, so calls pipelined behind the hello
        already run as the tenant.  A wrong one is answered late, later after each failure
        on this connection, and every hello waits for the failures before it (calls sent
        meanwhile get NOAUTH): guessing costs time per try.  The token is never echoed.
        """
        attempts = self._attempts.get(conn)
        if attempts is None:
            attempts = self._attempts[conn] = Attempts()
        tenant = None
        if isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_CHARS:
            tenant = self.table.identify(token)
        now = time.monotonic()
        if tenant is None:
            attempts.failures += 1
            penalty = min(MAX_PENALTY_S, FIRST_PENALTY_S * 2 ** (attempts.failures - 1))
            attempts.not_before = max(now, attempts.not_before) + penalty
        if tenant is None or attempts.not_before > now:
            return self._answer_later(attempts.not_before - now, conn, tenant)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self._bind(conn, tenant))
        except OSError as exc:
            future.set_exception(exc)
        return future

    async def _answer_later(self, delay: float, conn: Any,
                            tenant: Tenant | None) -> dict[str, Any]:
        await asyncio.sleep(delay)
        return self._bind(conn, tenant)

    def _bind(self, conn: Any, tenant: Tenant | None) -> dict[str, Any]:
        session = self.sessions.get(tenant.name) if tenant is not None else None
        if session is None or tenant is None or session.token_hash != tenant.token_hash:
            raise posix(errno.EACCES, "auth.hello: no tenant has this token")
        conn.session = session
        return {"tenant": session.tenant, "admin": session.admin}
