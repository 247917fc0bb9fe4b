"""What the supervisor tells a kernel process at boot, and the kernel's exit codes.

The boot message travels as the first msgpack-rpc notification on the control socketpair
(``[2, "kernel.boot", [info]]``), so the kernel process needs no argv parsing beyond two
file descriptor numbers and nothing secret lands in ``ps`` output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

BOOT_NOTIFICATION = "kernel.boot"
READY_NOTIFICATION = "kernel.ready"
LOADING_NOTIFICATION = "kernel.loading"
"""Sent during boot while the kernel loads its slots' state: proof of progress, which
extends the supervisor's boot deadline (``supervisor.boot_timeout`` between reports)."""

EXIT_BOOT_FAILED = 3
"""Reserved exit code (gunicorn's idea): the kernel could not start; restarting at once
would fail the same way, so the supervisor counts these toward marking it failed."""

EXIT_FLUSH_FAILED = 4
"""A group commit's fsync failed: acknowledged state can no longer be promised, so the
kernel exits without replying and recovers from its journal on restart (fsyncgate)."""


@dataclass(frozen=True)
class BootInfo:
    kernel_id: int
    core: int
    epoch: int
    ranges: list[list[int]]
    addrs: dict[int, list[Any]]
    config: dict[str, dict[str, Any]]
    data_dir: str
    supervisor_pid: int
    mode: str = "partitioned"
    threads: int = 1
    supervisor_addrs: list[list[Any]] = field(default_factory=list)
    """The supervisor's listeners (control, metrics): farm ports no namespace may reach."""
    tenants: dict[str, Any] = field(default_factory=dict)
    """The tenant table (:meth:`kernelfarm.auth.table.TenantTable.to_wire`)."""

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data["addrs"] = [[kid, addr] for kid, addr in self.addrs.items()]
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> BootInfo:
        data = dict(data)
        data["addrs"] = {int(kid): list(addr) for kid, addr in data["addrs"]}
        return cls(**data)
