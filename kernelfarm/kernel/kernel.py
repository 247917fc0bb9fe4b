"""The kernel: one process, one thread, one event loop, the state of the slots it owns.

This is the fast path.  Every request goes through :meth:`Kernel.handle`: find the method,
find its partition key, check the slot is ours (a bytearray index), call the subsystem's
handler.  There is no lock and no lock-shaped code here: a unicpu kernel is the only thread
that ever touches its state (rump's RUMP_NCPU=1).  The locked baseline gets its locks by
wrapping handlers at registration (:mod:`kernelfarm.kernel.locks`), never by code on this path.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import time
from binascii import crc_hqx
from dataclasses import replace
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import psutil
from mypy_extensions import mypyc_attr

from kernelfarm.accel import compiled
from kernelfarm.auth.gate import HELLO, Gate
from kernelfarm.auth.table import TenantTable
from kernelfarm.boot import BootInfo
from kernelfarm.config import Config
from kernelfarm.errors import (
    KernelfarmError, Moved, Refusal, TryAgain, internal_error, posix, to_wire,
)
from kernelfarm.kernel.commit import Flush, GroupCommit
from kernelfarm.kernel.components import SUBSYSTEMS
from kernelfarm.rpc.params import Params
from kernelfarm.kernel.subsystem import Method, Subsystem, scoped_root
from kernelfarm.partition import NSLOTS, SlotTable
from kernelfarm.ratelog import RateLimitedLog
from kernelfarm.rpc.meter import Meter
from kernelfarm.rpc.protocol import Wire
from kernelfarm.steps import Steps, finish, run_sliced

log = logging.getLogger(__name__)
mistakes = RateLimitedLog(log)
"""One line per bad call (a client's mistake), rate-limited: never a traceback."""
failures = RateLimitedLog(log)
"""Handler failures that are not a client's mistake (bugs): with traceback, rate-limited."""

SLOT_MASK = NSLOTS - 1  # NSLOTS is a power of two: % NSLOTS == & SLOT_MASK
SLOTS_REMEMBERED = 65536
"""Partition keys whose slot a kernel keeps (a dict lookup instead of UTF-8 + CRC16)."""
ROUTES_REMEMBERED = 16384
"""First parameters (paths, namespaces) of one method's requests this kernel serves whose
route it keeps (``Method.routes``), so the next request for a known path is routed by one
dict lookup, with no call."""
REMEMBERED_KEY_CHARS = 128
"""Longer keys and first parameters are not kept (they pay the key function and the CRC
each time): what the remembered routes and slots hold stays bounded by their counts of
short strings, however long the strings clients send."""

Wrapper = Callable[[Method], Method]


@mypyc_attr(allow_interpreted_subclasses=True)  # LockedKernel, when this is compiled
class Kernel:
    """Routes requests to subsystems for owned slots; answers MOVED/TRYAGAIN otherwise.

    Also the :class:`~kernelfarm.kernel.subsystem.KernelContext` its subsystems see, and
    the :class:`~kernelfarm.rpc.server.Service` its connections call.
    """

    def __init__(self, boot: BootInfo, config: Config, loop: asyncio.AbstractEventLoop,
                 wrap: Wrapper | None = None) -> None:
        self.kernel_id = boot.kernel_id
        self.core = boot.core
        self.config = config
        self.data_dir = Path(boot.data_dir)
        self.loop = loop
        self.mode = boot.mode
        self.table = SlotTable.from_ranges(boot.epoch, boot.ranges)
        self.addrs = dict(boot.addrs)
        self.supervisor_addrs = [list(addr) for addr in boot.supervisor_addrs]
        self.farm_endpoints = self._endpoints()
        self.owned = self.table.owned_mask(self.kernel_id)
        self.frozen: set[int] = set()
        """Slots being handed over: their writes get TRYAGAIN, their reads still serve."""
        self.errors: dict[str, int] = {}
        """Failed requests by error code (the error path only: no cost on success)."""
        self.redirected = 0
        """Requests answered ``MOVED`` or ``TRYAGAIN``: routing, not errors."""
        self.meter = Meter()
        self.conns: set[Any] = set()
        self.started = time.time()
        self._process = psutil.Process()
        self.group_commit = GroupCommit(loop.call_soon)
        self._slot_of: dict[str, int] = {}
        self.subsystems: list[Subsystem] = [cls(self) for cls in SUBSYSTEMS]
        self.methods: dict[str, Method] = {}
        self.params: dict[str, Params] = {}
        """Each method's parameters, for answering a wrong call in the contract's words."""
        core_methods = [
            Method("kernel.ping", self.ping, None),
            Method("kernel.stats", self.stats, None),
            Method(HELLO, self._hello, None,
                   is_async=True, wants_conn=True),
        ]
        for method in scoped_root(core_methods + [m for s in self.subsystems
                                                  for m in s.methods()]):
            self.params[method.name] = Params.of(method)
            # The locked baseline serves every call through its (locked) handler.
            self.methods[method.name] = wrap(replace(method, kept=None)) if wrap else method
        self.gate: Gate[Method] = Gate(
            config.auth.required, TenantTable.from_wire(boot.tenants),
            public={name: self.methods[name] for name in (HELLO, "kernel.ping")},
            tenant=self.methods, admin=self.methods)
        for subsystem in self.subsystems:
            subsystem.use_credentials(self.gate.credentials)

    def _hello(self, conn: Any, token: Any) -> Any:
        """``auth.hello``: the gate's, found when called (the gate is made after the
        methods it guards)."""
        return self.gate.hello(conn, token)

    # -- KernelContext -------------------------------------------------------------------

    def owns(self, slot: int) -> bool:
        return bool(self.owned[slot])

    def request_flush(self, flush: Flush) -> None:
        self.group_commit.request(flush)

    # -- Service -------------------------------------------------------------------------

    def handle(self, conn: Any, msgid: int, method: str,
               params: Sequence[Any]) -> list[Any] | None:
        """A request's reply, or ``None`` for a call that waits.  ``params`` is a tuple
        from the public listener (``tuples``: no list built per request), a list from
        the control channel: handlers take any sequence."""
        # Dicts are subscripted, not asked with .get(): the method call costs about 100
        # instructions more per lookup, and a miss (an unknown method, a first request
        # for a path) is rare and on a slow path anyway.
        session = conn.session
        try:
            entry = session.methods[method]
        except KeyError:
            return self._failed(conn, msgid, self.gate.refuse(session, method))
        try:
            try:
                key = entry.routes[params[0]]  # served here: ours, not moving
            except (KeyError, IndexError, TypeError):  # new, no params, unhashable, unkeyed
                refused = self._routed(conn, msgid, entry, params)
                if refused is not None:
                    return refused
            else:
                grants = session.grants
                if grants is not None and key is not None \
                        and not grants.allows(method, key):
                    return self._failed(conn, msgid, self.gate.denied(method, key))
            if entry.kept is not None and len(params) == 1:
                # A result the subsystem keeps (a stat), answered here: no handler frame.
                try:
                    result = entry.kept.get(params[0])
                except TypeError:  # unhashable: the handler refuses it
                    result = None
                if result is not None:
                    entry.served[0] += 1
                    return [1, msgid, None, result]
            if entry.wants_conn:
                result = entry.handler(conn, *params)
            else:
                # The listener's params are a tuple, which a * call passes as it is:
                # cheaper than counting them to pass one or two by index (a list, from
                # the control channel, is copied into one).
                result = entry.handler(*params)
        except Exception as exc:
            return self._failed(conn, msgid, self.failure(method, params, exc))
        if type(result) is Refusal:
            return self._failed(conn, msgid, result.error)
        entry.served[0] += 1
        if entry.is_async and hasattr(result, "__await__"):
            bound = entry.reply_bytes
            conn.start_call(msgid, result, bound(params) if bound is not None else 0)
            return None
        return [1, msgid, None, result]

    def _routed(self, conn: Any, msgid: int, entry: Method, params: Sequence[Any]
                ) -> list[Any] | None:
        """Route a request the hard way: its key function, its grant, its slot.  ``None``
        when it is served here, else the answer (denied, ``MOVED``, ``TRYAGAIN``).

        A request served here has its route kept by its method (``Method.routes``), by
        its first parameter (key functions read only that one): the next request of that
        method for that path or namespace skips all of this but the grant.  Kept by
        method, not by string alone, because one string can be a path for ``fs.*`` and a
        namespace for ``net.*``; and the lookup needs no check of which key function
        found the route.  Routes are forgotten whenever a slot stops being served or
        starts moving (:meth:`freeze`, :meth:`release`), so a kept route is always one
        this kernel serves, for reads and writes alike.
        """
        keyfn = entry.key
        if keyfn is None:  # any kernel serves it (kernel.ping, auth.hello): no route kept
            return None
        key = keyfn(params)
        slot = -1
        if key is not None:
            grants = conn.session.grants
            if grants is not None and not grants.allows(entry.name, key):
                return self._failed(conn, msgid, self.gate.denied(entry.name, key))
            slot = self._slot_of.get(key, -1)
            if slot < 0:
                slot = self._remember_slot(key)
            if not self.owned[slot]:
                self.redirected += 1
                return [1, msgid, self._not_here(slot), None]
            if slot in self.frozen:
                if entry.writes:
                    self.redirected += 1
                    return [1, msgid, TryAgain(f"slot {slot} is moving", slot=slot)
                            .to_wire(), None]
                return None  # a read of a moving slot: served, not remembered
        first = params[0] if params else None
        if type(first) is str and len(first) <= REMEMBERED_KEY_CHARS:
            routes = entry.routes
            if len(routes) >= ROUTES_REMEMBERED:
                routes.clear()
            routes[first] = key
            if slot >= 0 and slot in self.frozen:
                # The locked baseline's control thread froze or released it meanwhile;
                # both mark it frozen before forgetting routes, so this sees it or that
                # forgets this one.  (A unicpu kernel has no meanwhile.)
                routes.pop(first, None)
        return None

    def _failed(self, conn: Any, msgid: int, error: dict[str, Any]) -> list[Any]:
        code = error.get("code", "EFARM")
        self.errors[code] = self.errors.get(code, 0) + 1
        conn.session.usage.errors += 1
        return [1, msgid, error, None]

    def failure(self, method: str, params: Sequence[Any], exc: BaseException
                ) -> dict[str, Any]:
        """The error a failed call answers with: a wrong number of parameters is
        ``EINVAL`` in the contract's words (one line in the log, rate-limited); the rest
        is :meth:`fault`'s to say."""
        if not isinstance(exc, (OSError, KernelfarmError)):
            shape = self.params[method]
            if not shape.accepts(len(params)):
                message = shape.mismatch(method, len(params))
                mistakes.log(logging.INFO, "EINVAL: %s", message)
                return to_wire(posix(errno.EINVAL, message))
        return self.fault(exc)

    def fault(self, exc: BaseException) -> dict[str, Any]:
        """Tell a client's mistake from a bug (also for waiting calls that failed).

        POSIX and farm errors are the contract working (``InvalidParameter`` is how
        handlers refuse a parameter, ``EINVAL``): nothing to log.  Anything else is a bug
        in the kernel -- a ``TypeError`` or ``ValueError`` too, since those are what
        broken code raises: ``EIO`` "internal error", logged once with its traceback
        (rate-limited, so a client that hits the bug again and again cannot flood the log).
        """
        if isinstance(exc, (OSError, KernelfarmError)):
            return to_wire(exc)
        failures.log(logging.ERROR, "internal error answered EIO", exc_info=exc)
        return internal_error(exc)

    def _remember_slot(self, key: str) -> int:
        """A key's slot, kept for its next request (a key's slot never changes)."""
        slot = crc_hqx(key.encode("utf-8", "surrogatepass"), 0) & SLOT_MASK
        if len(key) <= REMEMBERED_KEY_CHARS:
            if len(self._slot_of) >= SLOTS_REMEMBERED:
                self._slot_of.clear()
            self._slot_of[key] = slot
        return slot

    def send(self, conn: Any, data: Wire) -> None:
        self.group_commit.send(conn, data)

    def connection_made(self, conn: Any) -> None:
        conn.session = self.gate.first_session()
        self.conns.add(conn)

    def connection_closed(self, conn: Any) -> None:
        self.conns.discard(conn)

    def served_here(self) -> set[Any]:
        """The connections this thread serves (all of them, in a unicpu kernel)."""
        return self.conns

    async def drain(self, grace: float) -> None:
        """Clean stop: let waiting calls answer for up to ``grace`` s, then hang up."""
        conns = self.served_here()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.inflight for c in conns) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(conns):
            conn.close()

    def _not_here(self, slot: int) -> dict[str, Any]:
        if self.owned[slot] == 0 and slot in self.frozen:
            return TryAgain(f"slot {slot} is moving", slot=slot).to_wire()
        owner = self.table.owner(slot)
        return Moved(f"slot {slot} is served by kernel {owner}", slot=slot, kernel=owner,
                     addr=self.addrs.get(owner), epoch=self.table.epoch).to_wire()

    # -- slot ownership (the supervisor drives these over the control channel) ----------
    #
    # A slot moves from kernel S to kernel D in four steps, each a control call:
    # S.freeze (its writes get TRYAGAIN, reads go on) -> S.release (state made durable and
    # dropped; every request gets TRYAGAIN) -> D.acquire (state loaded from the shared
    # data dir) -> S.hand_over (open connections follow) -> set_table on every kernel (the
    # owner flips with a new epoch; S answers MOVED from then on).  Only the moving slots
    # ever pause.

    def freeze(self, slots: list[int]) -> int:
        self.frozen.update(slots)
        self._forget_routes()
        return len(slots)

    def _forget_routes(self) -> None:
        """Kept routes are of slots served and not moving: forget them all when one moves."""
        for method in self.methods.values():
            method.routes.clear()

    def thaw(self, slots: list[int]) -> int:
        self.frozen.difference_update(slots)
        return len(slots)

    def release(self, slots: list[int]) -> int:
        mine = [s for s in slots if self.owned[s]]
        self.frozen.update(slots)
        self._forget_routes()
        for slot in mine:
            self.owned[slot] = 0
        self._commit_now()
        for subsystem in self.subsystems:
            for slot in mine:
                subsystem.release_slot(slot)
        return len(mine)

    def acquire(self, slots: list[int]) -> int:
        """Load ``slots`` and serve them, in one go (:meth:`set_table` catching up)."""
        return finish(self._acquiring(slots))

    async def acquire_sliced(self, slots: list[int],
                             report: Callable[[int], None] | None = None,
                             report_every: float = 1.0) -> int:
        """``kernel.acquire``: load ``slots`` in slices of the loop, so that a big volume
        loading neither stalls the kernel's other slots nor leaves the supervisor's
        heartbeat unanswered (which would get this kernel killed as hung).  Until the
        load is done the slots are not ours: their requests get ``MOVED`` to the source,
        which answers ``TRYAGAIN`` while they move.  The supervisor sends one ownership
        change at a time, so no other call touches these slots meanwhile.  ``report``:
        see :func:`~kernelfarm.steps.run_sliced`."""
        return await run_sliced(self._acquiring(slots), report, report_every)

    def _acquiring(self, slots: list[int]) -> Steps[int]:
        new = [s for s in slots if not self.owned[s]]
        try:
            yield from self.loading(new)
        except BaseException:
            # Loaded nothing, as far as anyone can tell: the source takes them back.
            for subsystem in self.subsystems:
                for slot in new:
                    subsystem.release_slot(slot)
            raise
        for slot in new:
            self.owned[slot] = 1
        self.frozen.difference_update(slots)
        return len(new)

    def hand_over(self, slots: list[int], target: str) -> int:
        """Between a move's acquire and its new table: the released slots' open
        connections go to the new owner (``target``: its hand-off socket)."""
        return sum(subsystem.hand_over(slots, target) for subsystem in self.subsystems)

    def set_table(self, epoch: int, ranges: list[list[int]],
                  addrs: list[list[Any]]) -> dict[str, Any]:
        """Adopt a newer slot table: its owners answer MOVED, its addresses go in MOVED.

        Slots the table gives us that we do not hold are loaded, and slots we hold that it
        gives away are released, so a kernel that missed a step (restart, rollback) ends up
        holding exactly what the table says.
        """
        if epoch < self.table.epoch:
            raise ValueError(f"epoch {epoch} is older than ours ({self.table.epoch})")
        table = SlotTable.from_ranges(epoch, ranges)
        owned = table.owned_mask(self.kernel_id)
        self.addrs = {int(kid): list(addr) for kid, addr in addrs}
        self.farm_endpoints = self._endpoints()
        lost = [s for s in range(NSLOTS) if self.owned[s] and not owned[s]]
        gained = [s for s in range(NSLOTS) if owned[s] and not self.owned[s]]
        self.release(lost)
        self.acquire(gained)
        self.table = table
        self.frozen.clear()
        return {"kernel": self.kernel_id, "epoch": epoch, "gained": len(gained),
                "lost": len(lost)}

    def set_tenants(self, table: dict[str, Any]) -> dict[str, Any]:
        """Adopt the supervisor's tenant table; connections of a removed tenant are cut."""
        tenants = TenantTable.from_wire(table)
        applied = self.gate.update(tenants, self.conns)
        return {"kernel": self.kernel_id, "version": self.gate.table.version,
                "applied": applied}

    def _endpoints(self) -> tuple[tuple[str, int], ...]:
        """The farm's own listeners, which no namespace may reach (the net policy)."""
        addrs = [*self.addrs.values(), *self.supervisor_addrs]
        return tuple((str(host), int(port)) for host, port in addrs)

    def load_slots(self, slots: list[int]) -> None:
        finish(self.loading(slots))

    def loading(self, slots: list[int]) -> Steps[None]:
        """Every subsystem's state of ``slots``, loaded a step at a time.

        The cyclic garbage collector is paused meanwhile and what is loaded is frozen
        after (``gc.freeze``): loaded trees hold no reference cycles, and a full
        collection walks every tracked object -- 1.6 s for a kernel holding two million
        files, measured, on the loop -- and writes to each, which also copies the pages
        a snapshot child shares with the kernel.  Frozen objects are still freed by
        reference counting when a file is deleted or a slot given away; cyclic garbage
        would not be, so the young generations are collected first (cheap: the loaded
        state is not in them yet), and nothing is frozen when no slot is loaded.
        """
        if not slots:
            return
        gc.collect(1)
        gc.disable()
        try:
            for subsystem in self.subsystems:
                yield from subsystem.loading(slots)
        finally:
            gc.freeze()
            gc.enable()

    def _commit_now(self) -> None:
        """Finish this turn's group commit before state leaves (release, stop)."""
        self.group_commit.commit_now()

    def close(self) -> None:
        self._commit_now()
        for subsystem in reversed(self.subsystems):
            subsystem.close()
        self.group_commit.close()  # its syncer, if it has one

    # -- core methods --------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return {"kernel": self.kernel_id, "epoch": self.table.epoch, "ops": self.served()}

    @property
    def ops(self) -> dict[str, int]:
        """Requests served, by method (each method counts its own, ``Method.served``)."""
        return {name: method.served[0] for name, method in self.methods.items()}

    def served(self) -> int:
        """Requests served for clients: the supervisor's own pings and stats do not count."""
        ops = self.ops
        return sum(ops.values()) - ops.get("kernel.ping", 0) - ops.get("kernel.stats", 0)

    def stats(self) -> dict[str, Any]:
        proc = self._process
        with proc.oneshot():
            cpu = proc.cpu_times()
            memory = proc.memory_info().rss
            threads = proc.num_threads()
            fds = proc.num_fds()
            affinity = proc.cpu_affinity()
        return {
            "kernel": self.kernel_id,
            "pid": proc.pid,
            "core": self.core,
            "affinity": affinity,
            "mode": self.mode,
            "compiled": compiled(),
            "epoch": self.table.epoch,
            "slots": int(sum(self.owned)),
            "ops": {method: count for method, count in self.ops.items() if count},
            "ops_total": self.served(),
            "errors": sum(self.errors.values()),
            "errors_by_code": dict(self.errors),
            "redirected": self.redirected,
            **self.group_commit.stats(),
            "fds": fds,
            **self.meter.snapshot(),
            "cpu_user": cpu.user,
            "cpu_system": cpu.system,
            "memory_rss": memory,
            "threads": threads,
            "connections": len(self.conns),
            "tenants": self.gate.usage_report(),
            "uptime": time.time() - self.started,
            "subsystems": {s.name: s.stats() for s in self.subsystems},
        }
