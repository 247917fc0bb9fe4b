"""What a subsystem is: the components a kernel is composed of (fs, net, ...).

As a rump kernel is rumpkern plus rumpfs plus rumpnet, a kernelfarm kernel is the RPC
core plus subsystems.  A subsystem names its methods and how each request's partition key
is found; the kernel does the routing (owned slot or ``MOVED``), the accounting and the
group commit, so subsystem code holds only its own logic and never sees a slot it does
not own.

The same subsystem code runs in a unicpu kernel (no lock anywhere on the path) and in the
locked baseline, where the lock provider wraps the handlers at registration.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

from kernelfarm.steps import Steps, finish

if TYPE_CHECKING:
    from kernelfarm.config import Config


class Unheld(list[int]):
    """Descriptors a flush names for a sync that no reply waits for: the ``batch``
    policy's timer makes journals durable whose writes were all answered already (the
    policy promises the write, and durability within ``batch_interval_ms``).  Synced as
    any group (in order, a failure fatal), but replies made meanwhile go out at once:
    held, they waited up to an ``fdatasync`` every ``batch_interval_ms`` (the policy's
    p99).  Here, not in :mod:`.commit`: a compiled class cannot subclass ``list``."""


KeyOf = Callable[[Sequence[Any]], "str | None"]
"""Finds a request's partition key from its positional params (a list, or a tuple in a
lock wrapper); ``None`` = any kernel.  It reads the first parameter only (the path, the
namespace) and is a pure function of it: the kernel keeps the key it found by that
parameter and does not ask again (``Kernel._routed``)."""


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC method a subsystem serves.

    ``handler`` is called with the request's positional params (after ``conn`` when
    ``wants_conn``).  A synchronous handler returns the result; an ``is_async`` one
    returns an awaitable when it must wait (net I/O), or the result itself when it has
    it at once, which costs no task (a ``net.recv`` of data already there).

    ``writes`` marks methods that change state a migrating slot must not race: fs writes,
    and every net call that opens, moves data through or closes a socket (``net.recv``
    too: it consumes what it reads).  While a slot migrates they get ``TRYAGAIN``; the
    others (``fs.stat``, ``net.stats``...) keep serving.

    ``reply_bytes`` gives, from a waiting call's params, the most bytes of data its reply
    may carry (a ``net.recv``'s max).  The connection reserves them in its write buffer
    from when the call starts waiting until its reply is written, so replies still being
    produced count against ``rpc.write_buffer_bytes`` like those already queued.
    """

    name: str
    handler: Callable[..., Any]
    key: KeyOf | None
    is_async: bool = False
    writes: bool = False
    wants_conn: bool = False
    reply_bytes: Callable[[Sequence[Any]], int] | None = None
    kept: dict[str, Any] | None = None
    """Results of this method the subsystem keeps, by the request's one parameter (a
    path), each valid for as long as it is in the table: the subsystem removes a result
    the moment it may be wrong.  The kernel answers a request with one parameter found
    here itself, after routing it as any other, without calling the handler (a frame
    and the handler's own lookups); what is not here goes to the handler.  ``None``: the
    handler answers every request (and in the locked baseline, which serves every call
    under its locks)."""
    served: list[int] = field(default_factory=lambda: [0], compare=False)
    """Requests of this method the kernel answered (one cell, shared by the copies a lock
    wrapper makes with ``replace``): counting one is an index, not a dict update."""
    routes: dict[str, str | None] = field(default_factory=dict, compare=False)
    """The kernel's kept routes of this method (shared by the copies a lock wrapper
    makes): first parameter -> partition key (``None``: any kernel) of requests it
    serves; see ``Kernel._routed``."""


def with_conn_first(wrapper: Callable[..., Any], handler: Callable[..., Any]
                    ) -> Callable[..., Any]:
    """Give ``wrapper(conn, *args)`` the signature of ``handler(*args)`` with ``conn``
    first, so the parameter count a client is told (``Params``) stays the handler's."""
    signature = inspect.signature(handler)
    conn = inspect.Parameter("conn", inspect.Parameter.POSITIONAL_ONLY)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]  # inspect's hook
        parameters=[conn, *signature.parameters.values()])
    return wrapper


def scoped_root(methods: list[Method]) -> list[Method]:
    """``fs.listdir("/")`` lists only the volumes the caller's tenant is granted, and
    ``fs.statfs("/")`` adds up only theirs: a tenant learns neither the names nor the use
    of other tenants' volumes on its kernel.

    Here rather than in the kernel module because that one may be compiled
    (:mod:`kernelfarm.accel`), and a compiled closure has no signature to give ``Params``."""
    by_name = {method.name: method for method in methods}
    if "fs.listdir" not in by_name or "fs.statfs" not in by_name:
        return methods
    names_of, usage_of = by_name["fs.listdir"].handler, by_name["fs.statfs"].handler

    def listdir(conn: Any, path: Any, *rest: Any) -> Any:
        names = names_of(path, *rest)
        grants = conn.session.grants
        if path != "/" or grants is None:
            return names
        return [name for name in names if grants.allows("fs.listdir", name)]

    def statfs(conn: Any, path: Any, *rest: Any) -> Any:
        usage = usage_of(path, *rest)
        grants = conn.session.grants
        if path != "/" or grants is None:
            return usage
        used = [usage_of(f"/{name}") for name in names_of("/")
                if grants.allows("fs.statfs", name)]
        return {**usage, "volumes": len(used),  # the quotas are per volume: as they are
                "bytes_used": sum(volume["bytes_used"] for volume in used),
                "inodes_used": sum(volume["inodes_used"] for volume in used)}

    scoped = {"fs.listdir": with_conn_first(listdir, names_of),
              "fs.statfs": with_conn_first(statfs, usage_of)}
    return [replace(method, handler=scoped[method.name], wants_conn=True)
            if method.name in scoped else method for method in methods]


class Connection(Protocol):
    """The client connection a request came in on, for state tied to it (net sockets)."""

    session: Any
    """Who is calling (:class:`kernelfarm.auth.gate.Session`): its tenant and grants."""

    def on_close(self, callback: Callable[[], None]) -> None: ...


class KernelContext(Protocol):
    """What a kernel offers its subsystems."""

    kernel_id: int
    config: Config
    data_dir: Path
    loop: asyncio.AbstractEventLoop
    farm_endpoints: tuple[tuple[str, int], ...]
    """The farm's own listeners (control port, every kernel's port): off limits to net."""

    def owns(self, slot: int) -> bool: ...

    def request_flush(self, flush: Callable[[], Sequence[int]]) -> None:
        """Group commit: hold every reply of this loop turn until ``flush`` has run and
        the descriptors it returns are synced (``fdatasync``).

        A subsystem that appended to a journal calls this; the kernel calls each flush
        callable once after the turn's requests were handled, syncs what they name (one
        fsync for all of them, inline or in its syncer), then sends the held replies.
        A flush returns its descriptors as :class:`Unheld` when no reply waits for their
        sync.  A flush that raises is fatal: the kernel exits without sending them
        (:mod:`kernelfarm.kernel.commit`), so a write is never acknowledged that was not
        made durable, and recovers from its journal.
        """
        ...


class Subsystem:
    """Base class of the kernel's components; one instance per kernel."""

    name: ClassVar[str]

    def __init__(self, ctx: KernelContext) -> None:
        self.ctx = ctx

    def methods(self) -> list[Method]:
        raise NotImplementedError

    def load_slots(self, slots: list[int]) -> None:
        """Take ownership of ``slots`` in one go: :meth:`loading` run to its end."""
        finish(self.loading(slots))

    def loading(self, slots: list[int]) -> Steps[None]:
        """Take ownership of ``slots``: recover their state from ``ctx.data_dir`` (all at
        once, so a subsystem can look at the data dir once instead of once per slot),
        yielding between steps of a few milliseconds (:mod:`kernelfarm.steps`), so the
        kernel keeps answering while a big volume loads.  Nothing to load by default."""
        yield from ()

    def release_slot(self, slot: int) -> None:
        """Give ``slot`` up: make its state durable on disk, then drop it from memory."""

    def hand_over(self, slots: list[int], target: str) -> int:
        """After a move's ``acquire``: give the released slots' live resources that can
        travel (open connections) to the kernel serving hand-offs at ``target``; returns
        how many went."""
        return 0

    def stats(self) -> dict[str, Any]:
        return {}

    def use_credentials(self, check: Callable[[str, str, Any], str | None]) -> None:
        """For requests that carry a token rather than arriving on a connection that said
        hello: ``check(method, key, token)`` gives the tenant or raises ``EACCES``."""

    def use_locks(self, lock_for: Callable[[str], Any]) -> None:
        """The locked baseline only: ``lock_for(key)`` is the lock its handlers of partition
        key ``key`` run under.  State that the loop's own callbacks change outside a
        handler (a socket's readiness) takes it too; a unicpu kernel never calls this."""

    def close(self) -> None:
        """Clean shutdown: make everything durable and release every resource."""
