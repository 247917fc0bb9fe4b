"""The small-write path's shortcuts keep their promises: the clocks are read once per loop
turn (every change of a turn has the turn's time, and no time outlives its turn), and the
free-space reading, no longer aged per change, is still read again once it is older than
``SPACE_TTL_S`` -- so a disk that another process filled is noticed at the next turn."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest
from fs_harness import FakeKernel

from kernelfarm.fs import space

KIB = 1024
BLOCK = 4096


def test_the_changes_of_a_turn_have_its_time_and_no_time_outlives_its_turn(
        tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    kernel.turn([("fs.write_file", "/v/a", b"1"), ("fs.mkdir", "/v/d"),
                 ("fs.write_file", "/v/d/b", b"2"), ("fs.chmod", "/v/a", 0o600)])
    a, d, b = (kernel.api.stat(p) for p in ("/v/a", "/v/d", "/v/d/b"))
    turn = a["mtime_ns"]
    assert a["ctime_ns"] == d["mtime_ns"] == b["mtime_ns"] == b["ctime_ns"] == turn
    # A turn whose only change is refused read the clock too: the next turn reads it again.
    (refused,) = kernel.turn([("fs.write_file", "/v/none/c", b"3")])
    assert isinstance(refused, FileNotFoundError)
    before = time.time_ns()
    kernel.api.write_file("/v/a", b"4")
    assert kernel.api.stat("/v/a")["mtime_ns"] >= before > turn
    kernel.close()


def test_a_stale_free_space_reading_is_read_again_at_the_next_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fields = list(os.statvfs(tmp_path))
    fields[1], fields[4] = BLOCK, (1 << 40) // BLOCK  # f_frsize, f_bavail: 1 TiB free
    readings: list[str] = []

    def statvfs(path: Any) -> os.statvfs_result:
        readings.append(path)
        return os.statvfs_result(fields)

    clock = [1000.0]
    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(space, "monotonic", lambda: clock[0])
    kernel = FakeKernel(tmp_path, reserve_bytes=256 * KIB)
    kernel.api.mkdir("/v")
    readings.clear()
    for n in range(20):  # within SPACE_TTL_S: the reading is trusted, not taken again
        kernel.turn([("fs.write_file", f"/v/f{n}", b"x" * 16)] * 3)
    assert readings == []
    fields[4] = 100 * KIB // BLOCK  # another process filled the disk...
    kernel.api.write_file("/v/f0", b"y" * 16)  # ...unnoticed while the reading is fresh
    clock[0] += space.SPACE_TTL_S
    assert kernel.errno_of("fs.write_file", "/v/f0", b"z" * 16) == errno.ENOSPC
    assert readings  # read again: older than SPACE_TTL_S
    assert kernel.api.read_file("/v/f0") == b"y" * 16  # the refused write changed nothing
    kernel.close()
