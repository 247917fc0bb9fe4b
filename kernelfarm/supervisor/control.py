"""The control API the supervisor serves: ``cluster.*`` and ``tenant.*``, for clients and
the CLI.

Clients ask it once for the slot table and then talk to kernels directly; nothing here
is on the data path.  Who may call what is the connection's session
(:mod:`kernelfarm.auth.gate`): anyone may ``cluster.map`` and ``auth.hello``; a tenant
also ``cluster.status``; the admin also what changes the farm (``cluster.scale``,
``tenant.*``).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

from kernelfarm.auth.gate import HELLO, Gate
from kernelfarm.auth.table import TenantTable
from kernelfarm.errors import KernelfarmError, posix, to_wire
from kernelfarm.ratelog import RateLimitedLog
from kernelfarm.rpc.params import Params
from kernelfarm.rpc.protocol import Wire
from kernelfarm.rpc.server import ServerConnection

if TYPE_CHECKING:
    from kernelfarm.supervisor.supervisor import Supervisor

failures = RateLimitedLog(logging.getLogger("kernelfarm.supervisor"))
"""Control calls that failed with a bug: traceback logged, rate-limited."""


@dataclass(frozen=True)
class ControlMethod:
    handler: Callable[..., Any]
    is_async: bool = False
    wants_conn: bool = False


class ControlService:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        tenants = supervisor.tenants
        public = {
            "cluster.map": ControlMethod(supervisor.cluster_map),
            HELLO: ControlMethod(lambda conn, token: self.gate.hello(conn, token),
                                 is_async=True, wants_conn=True),
        }
        tenant = {**public, "cluster.status": ControlMethod(supervisor.cluster_status, True)}
        admin = {
            **tenant,
            "cluster.scale": ControlMethod(supervisor.scaler.scale, True),
            "cluster.scale_cancel": ControlMethod(supervisor.scaler.cancel, True),
            "tenant.add": ControlMethod(tenants.add, True),
            "tenant.remove": ControlMethod(tenants.remove, True),
            "tenant.rotate": ControlMethod(tenants.rotate, True),
            "tenant.list": ControlMethod(tenants.list),
        }
        self.params = {name: Params.of(entry) for name, entry in admin.items()}
        """Each method's parameters, for answering a wrong call in the contract's words."""
        self.gate: Gate[ControlMethod] = Gate(
            supervisor.config.auth.required, tenants.table, public=public, tenant=tenant,
            admin=admin)
        self.conns: set[ServerConnection] = set()

    def tenants_changed(self, table: TenantTable) -> None:
        self.gate.update(table, self.conns)

    def handle(self, conn: ServerConnection, msgid: int, method: str,
               params: Sequence[Any]) -> list[Any] | None:
        session = conn.session
        entry = session.methods.get(method)
        if entry is None:
            return [1, msgid, self.gate.refuse(session, method), None]
        try:
            args = (conn, *params) if entry.wants_conn else params
            if entry.is_async:
                conn.start_call(msgid, entry.handler(*args))
                return None
            return [1, msgid, None, entry.handler(*args)]
        except Exception as exc:
            shape = self.params[method]
            if isinstance(exc, TypeError) and not shape.accepts(len(params)):
                # In the contract's words, not Python's ("Scaler.scale() missing 1
                # required positional argument: 'n'").
                exc = posix(errno.EINVAL, shape.mismatch(method, len(params)))
            return [1, msgid, to_wire(exc), None]

    def send(self, conn: ServerConnection, data: Wire) -> None:
        conn.write(data)

    def fault(self, exc: BaseException) -> dict[str, Any]:
        """Control methods check their parameters with ``TypeError``/``ValueError``
        (``EINVAL``); anything else that escapes one is a bug, logged with its traceback."""
        if not isinstance(exc, (OSError, KernelfarmError, TypeError, ValueError)):
            failures.log(logging.ERROR, "control call failed", exc_info=exc)
        return to_wire(exc)

    def connection_made(self, conn: ServerConnection) -> None:
        conn.session = self.gate.first_session()
        self.conns.add(conn)

    def connection_closed(self, conn: ServerConnection) -> None:
        self.conns.discard(conn)
