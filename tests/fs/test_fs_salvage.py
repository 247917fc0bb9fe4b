"""Recovery never loses a whole volume for one bad file (in process, on damaged files)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgpack
import pytest
from fs_harness import FakeKernel

from kernelfarm.fs import store
from kernelfarm.partition import key_slot


def volume_dir(data_dir: Path, name: str) -> Path:
    return Path(store.slot_dir(data_dir, key_slot(name))) / store.volume_dirname(name)


def two_volumes(tmp_path: Path) -> FakeKernel:
    kernel = FakeKernel(tmp_path)
    fs = kernel.api
    for volume in ("good", "bad"):
        fs.mkdir(f"/{volume}")
        fs.mkdir(f"/{volume}/d")
        for i in range(20):
            fs.write_file(f"/{volume}/d/f{i}", bytes([i]) * 100)
    return kernel


def reopen(kernel: FakeKernel, tmp_path: Path) -> FakeKernel:
    kernel.close()
    return FakeKernel(tmp_path)


def damaged(kernel: FakeKernel) -> dict[str, str]:
    result: dict[str, str] = kernel.fs.stats()["damaged"]
    return result


def test_an_unreadable_name_file_is_repaired_from_the_snapshot(tmp_path: Path) -> None:
    kernel = two_volumes(tmp_path)
    (volume_dir(tmp_path, "bad") / "VOLUME").write_bytes(b"")  # the bug of issue 9
    kernel = reopen(kernel, tmp_path)
    assert kernel.api.read_file("/bad/d/f3") == bytes([3]) * 100
    assert damaged(kernel) == {}
    assert (volume_dir(tmp_path, "bad") / "VOLUME").read_bytes() == b"bad"


def test_a_damaged_snapshot_serves_what_it_holds_read_only(tmp_path: Path) -> None:
    kernel = two_volumes(tmp_path)
    kernel.fs._snapshot(kernel.fs.volumes["bad"])  # the files now live in the snapshot
    kernel.api.write_file("/bad/after", b"in the journal")
    snap = volume_dir(tmp_path, "bad") / "snapshot"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle
    snap.write_bytes(bytes(data))
    kernel = reopen(kernel, tmp_path)
    fs = kernel.api
    readable = fs.listdir("/bad/d")
    assert 0 < len(readable) < 20                      # the part before the damage
    assert fs.read_file(f"/bad/d/{readable[0]}")[:1] in [bytes([i]) for i in range(20)]
    with pytest.raises(OSError) as info:
        fs.write_file("/bad/new", b"x")
    assert info.value.errno == errno.EROFS and "read-only" in str(info.value)
    assert "snapshot" in damaged(kernel)["bad"]
    assert kernel.fs.stats()["read_only"] == 1
    assert fs.read_file("/good/d/f7") == bytes([7]) * 100   # the other volume serves
    fs.write_file("/good/new", b"still writable")


def test_a_journal_record_that_cannot_apply_stops_the_replay_there(tmp_path: Path) -> None:
    kernel = two_volumes(tmp_path)
    journal = kernel.fs.volumes["bad"].journal
    kernel.close()
    assert journal.path == str(volume_dir(tmp_path, "bad") / "journal.0")
    # a well-framed record that cannot apply, and one after it (each its own frame)
    journal.records.append(msgpack.packb((4, ("nosuchdir", "x"), 1000)))
    journal.flush(fsync=True)
    journal.records.append(msgpack.packb((0, ("later",), 0o755, 999, 1)))
    journal.flush(fsync=True)
    journal.close_fd()
    kernel = FakeKernel(tmp_path)
    assert kernel.api.listdir("/bad/d") == sorted(f"f{i}" for i in range(20))
    assert "journal.0" in damaged(kernel)["bad"]
    with pytest.raises(OSError) as info:
        kernel.api.mkdir("/bad/x")
    assert info.value.errno == errno.EROFS
    assert kernel.api.read_file("/good/d/f1") == bytes([1]) * 100


def test_a_volume_with_no_readable_name_is_reported(tmp_path: Path) -> None:
    kernel = two_volumes(tmp_path)
    kernel.close()
    directory = volume_dir(tmp_path, "bad")
    (directory / "VOLUME").write_bytes(b"")
    (directory / "snapshot").write_bytes(b"garbage")
    kernel = FakeKernel(tmp_path)
    assert kernel.api.listdir("/") == ["good"]
    assert list(damaged(kernel)) == [str(directory)]
    assert "recovery failed" in damaged(kernel)[str(directory)]
    assert os.path.exists(directory)  # nothing deleted: an operator can still look
