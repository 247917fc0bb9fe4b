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
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernelfarm.errors import KernelfarmError
from kernelfarm.partition import Move, rebalance_plan

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
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def end(self) -> None:
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Scaler:
    """Carries out one scale operation at a time for its supervisor."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.record = MigrationRecord(supervisor.data_dir)
        self.progress: dict[str, Any] | None = None
        self.done = 0
        self.done_seconds = 0.0
        self.slots_moved = 0
        """Finished scale operations, their seconds and slots (the metrics export them)."""
        self._busy = asyncio.Lock()

    async def scale(self, n: int) -> dict[str, Any]:
        if type(n) is not int or n < 1:
            raise ValueError(f"the farm needs at least one kernel, got {n!r}")
        if self.sup.config.farm.mode == "locked":
            raise KernelfarmError("a locked-mode farm is one kernel; it does not scale")
        async with self._busy:
            return await self._scale(n)

    async def _scale(self, n: int) -> dict[str, Any]:
        sup = self.sup
        started = time.monotonic()
        before = len(sup.kernels)
        current = sorted(sup.kernels)
        if n > before:
            first = max(current) + 1
            wanted = current + list(range(first, first + n - before))
        else:
            wanted = current[:n]
        for kid in wanted:
            if kid not in sup.kernels:
                await sup.add_kernel(kid)
        assert sup.table is not None
        plan = rebalance_plan(sup.table, wanted)
        steps = batches(plan, sup.config.supervisor.scale_batch_slots)
        self.progress = {"from": before, "to": n, "slots_total": len(plan), "slots_moved": 0,
                         "started": time.time()}
        log.info("scaling %d -> %d kernels: %d slots to move in %d steps", before, n,
                 len(plan), len(steps))
        try:
            for batch in steps:
                await self._move(batch)
                self.progress["slots_moved"] += len(batch)
            for kid in [k for k in current if k not in wanted]:
                await sup.remove_kernel(kid)
        finally:
            self.progress = None
        elapsed = time.monotonic() - started
        self.done += 1
        self.done_seconds += elapsed
        self.slots_moved += len(plan)
        log.info("scaled %d -> %d kernels in %.2f s (%d slots moved)", before, n, elapsed,
                 len(plan))
        return {"from": before, "to": n, "moved": len(plan), "seconds": elapsed,
                "epoch": sup.table.epoch}

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
        await sup.wait_running([source, target])
        self.record.begin(sup.table.epoch, batch)
        await source.call("kernel.freeze", slots)
        await source.call("kernel.release", slots)
        await target.call("kernel.acquire", slots)
        if target.handoff is not None:
            await source.call("kernel.hand_over", slots, str(target.handoff_path))
        await sup.publish(sup.table.with_moves(batch, sup.table.epoch + 1))
        self.record.end()

    async def _roll_back(self, batch: list[Move]) -> None:
        """Put the batch's slots back where the table says they are (the source)."""
        sup = self.sup
        slots = [m.slot for m in batch]
        source, target = sup.kernels[batch[0].source], sup.kernels[batch[0].target]
        try:
            await sup.wait_running([source, target])
            await target.call("kernel.release", slots)
            await target.call("kernel.thaw", slots)
            await source.call("kernel.acquire", slots)
        except (KernelfarmError, OSError) as exc:
            # A kernel that restarts loads exactly its table's slots: nothing is lost.
            log.warning("rollback incomplete (%s); the restarted kernel reloads its slots", exc)
        self.record.end()
