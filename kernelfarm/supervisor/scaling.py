"""Live scaling: grow or shrink the farm while it serves, moving as few slots as possible.

The plan comes from :func:`kernelfarm.partition.rebalance_plan`; this module carries it
out in batches of slots that share a source and a target.  For each batch: the source
freezes the slots (writes get ``TRYAGAIN``, which clients retry), releases them (their
state is flushed durably to the shared data dir and dropped), the target acquires them
(loads them from disk), and the owner flips with a new epoch on every kernel (stale
clients get ``MOVED``).  Only a batch's slots pause; every other slot keeps serving.

The slot data never leaves the data dir, so whatever crashes mid-batch, every slot's
acknowledged state is on disk and exactly one kernel is told to load it: a failed step is
rolled back (the source takes its slots again) and retried, and a supervisor that dies takes
its kernels with it and the next one assigns every slot afresh.  Each batch is recorded in
``migration.json`` before it starts, so the next supervisor can say what was interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernelfarm import durable
from kernelfarm.errors import KernelfarmError, preview
from kernelfarm.partition import NSLOTS, Move, rebalance_plan

if TYPE_CHECKING:
    from kernelfarm.supervisor.supervisor import Supervisor

log = logging.getLogger("kernelfarm.supervisor")

STEP_RETRIES = 3
MIGRATION_FILE = "migration.json"


def batches(moves: list[Move], size: int) -> list[list[Move]]:
    """Group moves by (source, target) and cut each group into runs of ``size``."""
    groups: dict[tuple[int, int], list[Move]] = defaultdict(list)
    for move in moves:
        groups[(move.source, move.target)].append(move)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


class MigrationRecord:
    """``migration.json``: the batch in progress, written durably before it starts."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / MIGRATION_FILE

    def begin(self, epoch: int, batch: list[Move]) -> None:
        record = {"epoch": epoch, "source": batch[0].source, "target": batch[0].target,
                  "slots": [m.slot for m in batch], "started": time.time()}
        durable.write_file(self.path, json.dumps(record).encode(), 0o644)

    def end(self) -> None:
        """Forget the record.  Not fsynced: a record that a power cut brings back only
        reports a finished batch as interrupted, and the next supervisor assigns every
        slot afresh from disk either way."""
        self.path.unlink(missing_ok=True)

    def interrupted(self) -> dict[str, Any] | None:
        """The batch a previous supervisor did not finish, if any (then forgotten)."""
        try:
            record: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            record = {"unreadable": str(exc)}
        self.end()
        return record


def most_kernels(configured: int, cores: int) -> int:
    """``supervisor.max_kernels``, or four per allowed core; never above the slots.  The
    bound of ``scale`` and of what ``serve`` starts (kernels, or a locked kernel's threads)."""
    return min(configured or 4 * cores, NSLOTS)


class Scaler:
    """Carries out scale operations for its supervisor, one at a time.

    One driver task does the work, apart from the connections that asked for it: a client
    that goes away does not stop a half-done step.  A new ``scale`` call while one runs
    retargets it, and ``cancel`` stops it; either takes effect at the next checkpoint —
    before a kernel is started, before a batch of slots moves — where the slot table is
    consistent, so nothing is left half-moved.  Kernels a cancelled operation started that
    own no slot yet are stopped again.  The supervisor aborts the driver first thing when
    it stops, so SIGTERM during a scale does not wait for the scale.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.record = MigrationRecord(supervisor.data_dir)
        self.progress: dict[str, Any] | None = None
        self.done = 0
        self.done_seconds = 0.0
        self.slots_moved = 0
        """Finished scale operations, their seconds and slots (the metrics export them)."""
        self.target: int | None = None
        """What the running operation heads for; ``None`` once cancelled."""
        self._driver: asyncio.Future[dict[str, Any]] | None = None

    def max_kernels(self) -> int:
        return most_kernels(self.sup.config.supervisor.max_kernels, len(self.sup.cores))

    async def scale(self, n: int) -> dict[str, Any]:
        if type(n) is not int or n < 1:
            raise ValueError(f"the farm needs at least one kernel, got {preview(n)}")
        if self.sup.config.farm.mode == "locked":
            raise KernelfarmError("a locked-mode farm is one kernel; it does not scale")
        most = self.max_kernels()
        if n > most:
            raise ValueError(f"cannot scale to {n} kernels: this farm allows at most {most} "
                             f"(supervisor.max_kernels; 0 = four per allowed core, "
                             f"{len(self.sup.cores)} allowed here)")
        self.target = n
        if self._driver is None or self._driver.done():
            self._driver = self.sup.spawn_task(self._drive())
        else:
            log.info("scale retargeted to %d kernels", n)
        return await asyncio.shield(self._driver)

    async def cancel(self) -> dict[str, Any]:
        """Stop the running operation at its next checkpoint; its summary, or ``None``."""
        driver = self._driver
        if driver is None or driver.done():
            return {"cancelled": False, "kernels": len(self.sup.kernels)}
        self.target = None
        log.info("scale cancelled")
        return await asyncio.shield(driver)

    async def abort(self) -> None:
        """The supervisor is stopping: end the operation now, wherever it is."""
        driver = self._driver
        if driver is not None and not driver.done():
            # Also the checkpoint's way: Python 3.11's wait_for can swallow a cancellation
            # that arrives as its call completes, and the driver would go on moving slots.
            self.target = None
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)

    async def _drive(self) -> dict[str, Any]:
        sup = self.sup
        started = time.monotonic()
        original = sorted(sup.kernels)
        moved = 0
        try:
            while self.target is not None:
                n = self.target
                moved += await self._scale(n)
                if self.target == n:
                    break
            cancelled = self.target is None
            if cancelled:
                await self._remove_idle(original)
        except (KernelfarmError, OSError) as exc:
            # A step that failed all its attempts was rolled back: every slot is where
            # the table says.  The kernels this operation started that hold none go.
            log.error("scale failed: %s", exc)
            await self._remove_idle(original)
            raise
        except asyncio.CancelledError:
            # Only abort() cancels the driver (and, last of all, the supervisor's exit):
            # say where the scale stopped, before any kernel is asked to stop.
            progress = self.progress or {}
            log.info("scale stopped: the supervisor is stopping (%d kernels, %d of %d slots "
                     "moved in this step)", len(sup.kernels), progress.get("slots_moved", 0),
                     progress.get("slots_total", 0))
            raise
        finally:
            self.progress = None
            self.target = None
        elapsed = time.monotonic() - started
        self.done += 1
        self.done_seconds += elapsed
        self.slots_moved += moved
        assert sup.table is not None
        log.info("scaled %d -> %d kernels in %.2f s (%d slots moved%s)", len(original),
                 len(sup.kernels), elapsed, moved, ", cancelled" if cancelled else "")
        return {"from": len(original), "to": len(sup.kernels), "moved": moved,
                "seconds": elapsed, "epoch": sup.table.epoch, "cancelled": cancelled}

    async def _remove_idle(self, original: list[int]) -> None:
        """Stop the kernels started since ``original`` that own no slot yet."""
        sup = self.sup
        for kid in sorted(sup.kernels):
            if kid not in original and sup.table is not None \
                    and not sup.table.counts().get(kid):
                await sup.remove_kernel(kid)

    async def _scale(self, n: int) -> int:
        """Head for ``n`` kernels; return the slots moved, early if the target changed."""
        sup = self.sup
        before = len(sup.kernels)
        current = sorted(sup.kernels)
        if n > before:
            first = max(current) + 1
            wanted = current + list(range(first, first + n - before))
        else:
            wanted = current[:n]
        new = [kid for kid in wanted if kid not in sup.kernels]
        progress: dict[str, Any] = {
            "from": before, "to": n, "phase": "starting kernels", "kernels_started": 0,
            "kernels_to_start": len(new), "slots_total": 0, "slots_moved": 0,
            "started": time.time()}
        self.progress = progress
        for kid in new:
            if self.target != n:
                return 0
            await sup.add_kernel(kid)
            progress["kernels_started"] += 1
        assert sup.table is not None
        plan = rebalance_plan(sup.table, wanted)
        steps = batches(plan, sup.config.supervisor.scale_batch_slots)
        progress.update(phase="moving slots", slots_total=len(plan))
        log.info("scaling %d -> %d kernels: %d slots to move in %d steps", before, n,
                 len(plan), len(steps))
        for batch in steps:
            if self.target != n:
                return int(progress["slots_moved"])
            await self._move(batch)
            progress["slots_moved"] += len(batch)
        progress["phase"] = "stopping kernels"
        for kid in [k for k in current if k not in wanted]:
            await sup.remove_kernel(kid)
        return len(plan)

    async def _move(self, batch: list[Move]) -> None:
        last: Exception | None = None
        for attempt in range(STEP_RETRIES):
            try:
                await self._step(batch)
                return
            except (KernelfarmError, OSError) as exc:
                last = exc
                log.warning("moving %d slots %d -> %d failed (attempt %d): %s; rolling back",
                            len(batch), batch[0].source, batch[0].target, attempt + 1, exc)
                await self._roll_back(batch)
        raise KernelfarmError(f"could not move slots {batch[0].source} -> "
                              f"{batch[0].target}: {last}")

    async def _step(self, batch: list[Move]) -> None:
        sup = self.sup
        assert sup.table is not None
        slots = [m.slot for m in batch]
        source, target = sup.kernels[batch[0].source], sup.kernels[batch[0].target]
        stall = sup.config.supervisor.scale_stall_timeout
        await sup.wait_running([source, target])
        self.record.begin(sup.table.epoch, batch)
        await source.call_progressing("kernel.freeze", slots, stall=stall)
        await source.call_progressing("kernel.release", slots, stall=stall)
        await target.call_progressing("kernel.acquire", slots, stall=stall)
        if target.handoff is not None:
            await source.call_progressing("kernel.hand_over", slots, str(target.handoff_path),
                                          stall=stall)
        await sup.publish(sup.table.with_moves(batch, sup.table.epoch + 1))
        self.record.end()

    async def _roll_back(self, batch: list[Move]) -> None:
        """Put the batch's slots back where the table says they are (the source)."""
        sup = self.sup
        slots = [m.slot for m in batch]
        source, target = sup.kernels[batch[0].source], sup.kernels[batch[0].target]
        stall = sup.config.supervisor.scale_stall_timeout
        try:
            await sup.wait_running([source, target])
            await target.call_progressing("kernel.release", slots, stall=stall)
            await target.call_progressing("kernel.thaw", slots, stall=stall)
            await source.call_progressing("kernel.acquire", slots, stall=stall)
            if source.handoff is not None:  # sockets the target took before the failure
                await target.call_progressing("kernel.hand_over", slots,
                                              str(source.handoff_path), stall=stall)
        except (KernelfarmError, OSError) as exc:
            # A kernel that restarts loads exactly its table's slots, and one that runs on
            # is told the table again, which makes it hold exactly its slots: the source
            # takes back what it released even when the target could not give them up.
            log.warning("rollback incomplete (%s); every running kernel gets the table again",
                        exc)
            assert sup.table is not None  # a farm that scales has a table
            await sup.publish(sup.table)
        self.record.end()
