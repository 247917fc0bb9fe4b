"""When a volume's journal is restarted from a snapshot, with disk held for it.

A snapshot is written while the volume goes on changing (by a forked child where the kernel
is one thread: :mod:`.snapshotter`), so the room it needs is promised to it up front
(:meth:`.space.FreeSpace.hold`) and changes are refused with ``ENOSPC`` before the two
compete for the last bytes.  A snapshot that finds no room, or fails, costs only restart
time (the journals are whole and durable): it is retried once the journal has grown as
much again (:attr:`.volume.Volume.snapshot_bytes`).
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter

from kernelfarm.fs.snapshotter import Snapshotter
from kernelfarm.fs.space import SNAPSHOT_INODE_BYTES, FreeSpace
from kernelfarm.fs.volume import Volume

log = logging.getLogger(__name__)


class SnapshotSchedule:
    """The snapshots of one kernel's volumes: started, finished, and what they cost."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None, space: FreeSpace,
                 durable_switch: bool) -> None:
        self.space = space
        self.durable_switch = durable_switch
        """Sync the journal switch (see :meth:`.volume.Volume.begin_snapshot`)."""
        self.writer = Snapshotter(loop, self.done)
        self.held: dict[Volume, tuple[int, float]] = {}  # snapshots being written:
        # bytes of disk held for each, and when it started
        self.count = self.failures = 0
        self.seconds = 0.0

    def start(self, volume: Volume) -> bool:
        """Restart the volume's journal from a snapshot: written by a forked child where
        the kernel is one thread (:mod:`.snapshotter`), inline otherwise.  True if the
        journal was switched (or the attempt failed); False if nothing was begun."""
        writer = self.writer
        if writer.busy(volume):
            return False
        need = volume.tree.bytes_used + SNAPSHOT_INODE_BYTES * volume.tree.inodes
        if not self.space.hold(need):
            # No room for it: the journal goes on growing (and ENOSPC refuses changes
            # before it runs out).  Retry once the journal has grown as much again.
            volume.snapshot_bytes = max(volume.snapshot_bytes, volume.journal.size)
            return False
        self.held[volume] = (need, perf_counter())
        try:
            if writer.can_fork():
                if not writer.start(volume, self.durable_switch):
                    self.space.release(self.held.pop(volume)[0])
                    return False  # another volume's snapshot is being written: next flush
            else:
                volume.snapshot(self.durable_switch)
                self.done(volume, None)
        except OSError as exc:
            self.done(volume, exc)
        return True

    def done(self, volume: Volume, error: Exception | None) -> None:
        need, started = self.held.pop(volume, (0, perf_counter()))
        self.space.release(need)
        if error is None:
            self.count += 1
            self.seconds += perf_counter() - started
            return
        # The journals are whole and durable; only restart time suffers.  Retry once the
        # journal has grown as much again.
        self.failures += 1
        log.error("volume %r: snapshot failed: %s", volume.name, error)
        volume.snapshot_bytes = max(volume.snapshot_bytes, volume.journal.size)

    def cancel(self, volume: Volume) -> None:
        """The volume is dropped: stop its snapshot and free the disk held for it."""
        self.writer.cancel(volume)
        self.space.release(self.held.pop(volume, (0, 0.0))[0])

    def close(self) -> None:
        self.writer.close()
