"""The control API the supervisor serves: ``cluster.*``, for clients and the CLI.

Clients ask it once for the slot table and then talk to kernels directly; nothing here
is on the data path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from kernelfarm.errors import UnknownMethod, to_wire
from kernelfarm.rpc.server import ServerConnection

if TYPE_CHECKING:
    from kernelfarm.supervisor.supervisor import Supervisor


class ControlService:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.sync_methods: dict[str, Callable[..., Any]] = {
            "cluster.map": supervisor.cluster_map}
        self.async_methods: dict[str, Callable[..., Awaitable[Any]]] = {
            "cluster.status": supervisor.cluster_status, "cluster.scale": supervisor.scaler.scale,
            "cluster.scale_cancel": supervisor.scaler.cancel}

    def handle(self, conn: ServerConnection, msgid: int, method: str,
               params: list[Any]) -> list[Any] | None:
        try:
            if method in self.async_methods:
                conn.start_call(msgid, self.async_methods[method](*params))
                return None
            handler = self.sync_methods.get(method)
            if handler is None:
                raise UnknownMethod(f"no control method {method!r}")
            return [1, msgid, None, handler(*params)]
        except Exception as exc:
            return [1, msgid, to_wire(exc), None]

    def send(self, conn: ServerConnection, data: bytes) -> None:
        conn.write(data)

    def connection_made(self, conn: ServerConnection) -> None:
        pass

    def connection_closed(self, conn: ServerConnection) -> None:
        pass
