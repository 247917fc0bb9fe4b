"""The power-cut layer is trustworthy: what was made durable survives a cut, nothing else."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from kernelfarm import durable
from powercut_ctl import PowerCut, powercut_fs


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[PowerCut]:
    with powercut_fs(tmp_path) as mounted:
        yield mounted


def write(path: Path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        durable.write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_fsynced_data_and_names_survive_a_cut(fs: PowerCut) -> None:
    m = fs.mount
    write(m / "kept", b"durable", sync=True)
    durable.sync_dir(m)
    durable.makedirs(m / "a" / "b")
    write(m / "a" / "b" / "deep", b"x" * 100_000, sync=True)
    durable.sync_dir(m / "a" / "b")
    fs.cut()
    assert (m / "kept").read_bytes() == b"durable"
    assert (m / "a" / "b" / "deep").read_bytes() == b"x" * 100_000


def test_unsynced_data_is_lost_in_a_cut(fs: PowerCut) -> None:
    m = fs.mount
    write(m / "f", b"old", sync=True)
    durable.sync_dir(m)
    with open(m / "f", "ab") as fh:  # appended, never fsynced
        fh.write(b"-new")
    assert (m / "f").read_bytes() == b"old-new"
    write(m / "data-only", b"synced data, unsynced name", sync=True)
    fs.cut()
    assert (m / "f").read_bytes() == b"old"
    assert not (m / "data-only").exists()  # fsyncing a file does not make its name durable


def test_unsynced_truncate_and_overwrite_are_undone(fs: PowerCut) -> None:
    m = fs.mount
    write(m / "f", b"0123456789", sync=True)
    durable.sync_dir(m)
    fd = os.open(m / "f", os.O_RDWR)
    os.ftruncate(fd, 4)
    os.pwrite(fd, b"AB", 6)
    os.close(fd)
    assert (m / "f").read_bytes() == b"0123\0\0AB"
    fs.cut()
    assert (m / "f").read_bytes() == b"0123456789"


def test_name_changes_need_a_directory_fsync(fs: PowerCut) -> None:
    m = fs.mount
    write(m / "old", b"old", sync=True)
    write(m / "gone", b"gone", sync=True)
    durable.sync_dir(m)
    write(m / "new.tmp", b"new", sync=True)
    os.replace(m / "new.tmp", m / "old")   # install by rename, directory not fsynced
    os.unlink(m / "gone")
    os.mkdir(m / "dir")
    assert sorted(os.listdir(m)) == ["dir", "old"]
    fs.cut()
    assert sorted(os.listdir(m)) == ["gone", "old"]
    assert (m / "old").read_bytes() == b"old" and (m / "gone").read_bytes() == b"gone"
    # The same steps with the directory fsynced survive.
    write(m / "new.tmp", b"new", sync=True)
    os.replace(m / "new.tmp", m / "old")
    os.unlink(m / "gone")
    durable.sync_dir(m)
    fs.cut()
    assert os.listdir(m) == ["old"] and (m / "old").read_bytes() == b"new"


def test_durable_write_file_is_whole_or_absent(fs: PowerCut) -> None:
    target = fs.mount / "record.json"
    durable.write_file(target, b'{"a": 1}')
    fs.cut()
    assert target.read_bytes() == b'{"a": 1}'
    assert durable.remove(target)
    fs.cut()
    assert not target.exists()


def test_injected_eio_on_fsync(fs: PowerCut) -> None:
    path = fs.mount / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"data")
        fs.command("fail-fsync on")
        with pytest.raises(OSError) as info:
            os.fdatasync(fd)
        assert info.value.errno == errno.EIO
        with pytest.raises(OSError):
            durable.sync_dir(fs.mount)
        fs.command("fail-fsync off")
        os.fdatasync(fd)
    finally:
        os.close(fd)


def test_enospc_past_capacity(fs: PowerCut) -> None:
    fs.command("capacity 65536")
    st = os.statvfs(fs.mount)
    assert st.f_blocks * st.f_frsize == 65536
    fd = os.open(fs.mount / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 60_000)
        with pytest.raises(OSError) as info:
            os.write(fd, b"y" * 10_000)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert (fs.mount / "big").stat().st_size == 60_000
    assert json.loads(fs.command("stats"))["enospc"] == 1


def test_an_overwrite_takes_no_room(fs: PowerCut) -> None:
    """Writes inside a file (a journal's preallocated room) neither grow nor shrink
    what the capacity counts."""
    fs.command("capacity 65536")
    fd = os.open(fs.mount / "room", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, bytes(60_000))
        used = json.loads(fs.command("stats"))["used"]
        for offset in range(0, 60_000, 10_000):
            os.pwrite(fd, b"r" * 10_000, offset)
        assert json.loads(fs.command("stats"))["used"] == used
        with pytest.raises(OSError) as info:
            os.pwrite(fd, b"y" * 10_000, 60_000)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
