"""The free-space estimate (``fs.reserve_bytes``) counts every byte the kernel puts on disk,
the journal's zeroed room included: an estimate that trusts space already taken lets a
change through that the disk then refuses in the journal's own write (the kernel exits;
seen as a rare failure of tests/powercut's full-disk test)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from fs_harness import FakeKernel

from kernelfarm.fs import space

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


def test_a_full_data_dir_can_still_be_emptied(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the reserve, a change that adds is refused (ENOSPC), but unlink and rmdir may
    use half the reserve: a tenant can delete files to make room and remove the emptied
    volume.  Refused too, a full data dir could never be emptied from inside the farm
    (review, session 7: unlink ENOSPC, then rmdir of the volume ENOTEMPTY)."""
    fields = list(os.statvfs(tmp_path))
    fields[1], fields[4] = BLOCK, (1 << 30) // BLOCK  # f_frsize, f_bavail: 1 GiB free
    clock = [1000.0]
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(fields))
    monkeypatch.setattr(space, "monotonic", lambda: clock[0])
    kernel = FakeKernel(tmp_path, reserve_bytes=256 * KIB)
    for path in ("/v", "/v/d", "/w"):
        kernel.api.mkdir(path)
    for path in ("/v/d/f", "/v/g", "/w/kept"):
        kernel.api.write_file(path, b"x" * 100)
    fields[4] = 256 * KIB // BLOCK  # the disk fills to the reserve...
    clock[0] += space.SPACE_TTL_S  # ...and the next turn reads it
    assert kernel.errno_of("fs.write_file", "/v/h", b"z") == errno.ENOSPC
    assert kernel.errno_of("fs.mkdir", "/v/e") == errno.ENOSPC
    for path in ("/v/d/f", "/v/g"):
        kernel.api.unlink(path)
    kernel.api.rmdir("/v/d")
    kernel.api.rmdir("/v")  # emptied: the volume goes
    assert kernel.api.listdir("/") == ["w"]
    fields[4] = 100 * KIB // BLOCK  # under half the reserve: removals are refused too
    clock[0] += space.SPACE_TTL_S
    assert kernel.errno_of("fs.unlink", "/w/kept") == errno.ENOSPC
    kernel.close()
