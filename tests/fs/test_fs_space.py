"""The free-space estimate (``fs.reserve_bytes``) counts every byte the kernel puts on disk,
the journal's zeroed room included: an estimate that trusts space already taken lets a
change through that the disk then refuses in the journal's own write (the kernel exits;
seen as a rare failure of tests/powercut's full-disk test)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fs_harness import FakeKernel

KIB = 1024
BLOCK = 4096


def test_the_estimate_counts_the_journals_zeroed_room(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that grows the journal zero-fills room after it (as much as the log
    holds, up to 1 MiB: more than a reserve).  That room is on disk before any record
    is in it; if the journal is then switched by a snapshot, no record ever fills it.
    So the estimate drops by the room at once, not only by the record."""
    fields = list(os.statvfs(tmp_path))
    fields[1], fields[4] = BLOCK, (1 << 40) // BLOCK  # f_frsize, f_bavail: 1 TiB free
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(fields))
    kernel = FakeKernel(tmp_path, reserve_bytes=256 * KIB)
    kernel.api.mkdir("/v")
    journal = kernel.fs.volumes["v"].journal
    for n in range(8):  # a log of some size, so the next room is big
        kernel.api.write_file(f"/v/f{n}", bytes(32 * KIB))
    estimate, room = kernel.fs._space.free, journal.allocated - journal.size
    while journal.allocated - journal.size >= 16 * KIB + 512:  # fill the room up
        kernel.api.write_file("/v/fill", bytes(16 * KIB))
        estimate, room = kernel.fs._space.free, journal.allocated - journal.size
    kernel.api.write_file("/v/grows", bytes(32 * KIB))  # past the room: a new room
    added = journal.allocated - journal.size
    assert added > 256 * KIB > room
    assert estimate - kernel.fs._space.free >= 32 * KIB + added
    kernel.close()
