"""Free space on the data dir, counted so that a change never has to fail for want of it.

A change is refused with ``ENOSPC`` while taking its bytes would eat into
``fs.reserve_bytes``, so a journal write (which must not fail: the kernel would exit and
recover) always finds room.  Statvfs is too slow to ask per change, hence the cached
estimate of :class:`FreeSpace` and the generous per-record bounds below.
"""

from __future__ import annotations

import errno
import math
import os
from time import monotonic

from kernelfarm.errors import posix

RECORD_OVERHEAD = 256
"""Bytes a journal record takes beyond the data it carries (a generous bound)."""
VOLUME_BYTES = 64 * 1024
"""Bytes a new volume takes on disk (name file, empty journal, first snapshot, dirs)."""
SNAPSHOT_INODE_BYTES = 64
"""Bytes a snapshot record takes per inode beyond its data (a generous bound)."""
SPACE_TTL_S = 0.5
"""How long a statvfs reading of free space is trusted (minus what was written since)."""


def removals_keep(reserve: int) -> int:
    """What a removal (unlink, rmdir) keeps free of the reserve: half.  Refused like any
    change once under the reserve, a tenant could never delete a file to make room, nor
    empty a volume to remove it; ext4 keeps its reserve for root the same way.  A removal
    journals one small record per file or directory that was made above the reserve,
    so removals cannot eat the half they may use."""
    return reserve // 2


class FreeSpace:
    """A cached estimate of free space on the data dir: statvfs every ``SPACE_TTL_S`` or
    when the estimate nears the reserve, minus the bytes taken since.  Another process
    filling the disk between readings is caught by the journal write itself (ENOSPC:
    the kernel exits without acknowledging and recovers).

    Every change takes its bytes here, so the common case -- a reading far from the
    reserve -- is one comparison its caller makes inline (:attr:`low`:
    ``FsSubsystem._change``); the reading's age is checked once per loop turn, at the
    turn's first change (:meth:`check_age`, from ``FsSubsystem._time``), so a reading is
    trusted ``SPACE_TTL_S`` and at most one turn more.  :meth:`try_take` is the rest."""

    def __init__(self, path: str, reserve: int) -> None:
        self.path = path
        self.reserve = reserve
        self.free = 0
        self.low = 2 * reserve if reserve else -math.inf
        """An estimate below this is read again (with the reserve off: never)."""
        self.fresh_until = -math.inf if reserve else math.inf
        """When the last reading stops being trusted (``time.monotonic``)."""
        self.held = 0  # promised to a snapshot being written: not free at any reading

    def take(self, need: int) -> None:
        """Count ``need`` bytes as used, or raise ENOSPC if that would eat the reserve."""
        if not self.try_take(need):
            raise self.full()

    def full(self) -> OSError:
        return posix(errno.ENOSPC, f"the data dir has {self.free} bytes free and keeps "
                     f"{self.reserve} (fs.reserve_bytes) in reserve")

    def try_take(self, need: int, keep: int = -1) -> bool:
        """Count ``need`` bytes as used if ``keep`` bytes (default: the whole reserve;
        :func:`removals_keep` for a removal) stay free after them."""
        reserve = self.reserve
        if reserve == 0:
            return True
        left = self.free - need
        if left < self.low or monotonic() >= self.fresh_until:
            self.read()
            left = self.free - need
        if left < (reserve if keep < 0 else keep):
            return False
        self.free = left
        return True

    def check_age(self) -> None:
        """Read statvfs afresh if the reading is older than ``SPACE_TTL_S``."""
        if monotonic() >= self.fresh_until:
            self.read()

    def read(self) -> None:
        where = self.path
        while not os.path.isdir(where):  # no volume yet: the dir it will be made in
            where = os.path.dirname(where)
        st = os.statvfs(where)
        self.free = st.f_bavail * st.f_frsize - self.held
        self.fresh_until = monotonic() + SPACE_TTL_S

    def hold(self, need: int) -> bool:
        """Promise ``need`` bytes to a snapshot until :meth:`release`; False if no room."""
        if not self.try_take(need):
            return False
        self.held += need
        return True

    def release(self, need: int) -> None:
        """The snapshot is written (or given up): read statvfs afresh next time."""
        self.held -= need
        if self.reserve:
            self.fresh_until = -math.inf
