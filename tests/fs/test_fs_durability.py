"""Journal, snapshot, recovery and group commit, in process (crash tests against real
kernel processes live with the farm tests)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from fs_harness import FakeKernel

from kernelfarm.fs import store
from kernelfarm.fs.journal import PREALLOC_MIN
from kernelfarm.partition import key_slot


def volume_dir(data_dir: Path, name: str) -> Path:
    return Path(store.slot_dir(data_dir, key_slot(name))) / store.volume_dirname(name)


def journal_of(data_dir: Path, name: str) -> Path:
    (path,) = volume_dir(data_dir, name).glob("journal.*")
    return path


def whole_tree(kernel: FakeKernel, volume: str) -> dict[str, Any]:
    """Every inode of a volume with its full stat (ino and times included) and data."""
    out: dict[str, Any] = {}
    todo = [f"/{volume}"]
    while todo:
        path = todo.pop()
        entry = kernel.api.stat(path)
        if entry["type"] == "dir":
            todo.extend(f"{path}/{n}" for n in kernel.api.listdir(path))
        elif entry["type"] == "file":
            entry["data"] = kernel.api.read_file(path)
        else:
            entry["target"] = kernel.api.readlink(path)
        out[path] = entry
    return out


def populate(kernel: FakeKernel, count: int) -> None:
    fs = kernel.api
    fs.mkdir("/v")
    fs.mkdir("/v/d", 0o700)
    for i in range(count):
        fs.write_file(f"/v/d/f{i}", bytes([i]) * (i + 1))
    fs.pwrite("/v/d/f0", 5, b"hole")
    fs.symlink("/v/link", "d/f1")
    fs.rename("/v/d/f1", "/v/f1")
    fs.chmod("/v/f1", 0o600)
    fs.utime("/v/d", 42)
    fs.truncate("/v/d/f2", 1)
    fs.unlink("/v/d/f3")


@pytest.mark.parametrize("snapshot_bytes", [1, 64 * 1024 * 1024])
def test_recovery_reproduces_the_tree_exactly(tmp_path: Path, snapshot_bytes: int) -> None:
    kernel = FakeKernel(tmp_path, snapshot_journal_bytes=snapshot_bytes)
    populate(kernel, 6)
    before = whole_tree(kernel, "v")
    kernel.crash()
    assert whole_tree(kernel, "v") == before
    kernel.restart()
    assert whole_tree(kernel, "v") == before
    kernel.api.mkdir("/v/after")  # inode numbers keep growing after recovery
    assert kernel.api.stat("/v/after")["ino"] > max(e["ino"] for e in before.values())
    generation = int(journal_of(tmp_path, "v").suffix[1:])
    assert (generation > 1) == (snapshot_bytes == 1)  # snapshots restarted the journal
    kernel.close()


def journal_end(kernel: FakeKernel, name: str) -> int:
    """Where the volume's next journal record goes (the file is longer: zeros ahead)."""
    return kernel.fs.volumes[name].journal.size


@pytest.mark.parametrize("tear", ["file cut", "zeros in place"])
def test_a_torn_last_record_is_cut_and_everything_before_it_kept(tmp_path: Path,
                                                                 tear: str) -> None:
    """``file cut``: the file ends inside the record (a write that grew the file);
    ``zeros in place``: the record's end is still the zeros it was written over (a
    write into the preallocated room, torn by a power cut)."""
    kernel = FakeKernel(tmp_path)
    fs = kernel.api  # stays bound to the kernel across its restarts
    fs.mkdir("/v")
    for i in range(5):
        fs.write_file(f"/v/f{i}", b"%d" % i * 100)
    journal = journal_of(tmp_path, "v")
    before_last = journal_end(kernel, "v")
    fs.write_file("/v/last", b"L" * 300)
    full = journal_end(kernel, "v")
    kernel.close()
    pristine = journal.read_bytes()
    for cut in (before_last + 3, before_last + 8, full - 1):
        if tear == "file cut":
            journal.write_bytes(pristine[:cut])
        else:
            journal.write_bytes(pristine[:cut] + bytes(len(pristine) - cut))
        kernel.start()
        assert fs.listdir("/v") == [f"f{i}" for i in range(5)]
        assert fs.read_file("/v/f4") == b"4" * 100
        assert journal.stat().st_size == before_last  # the tail was cut off
        fs.write_file("/v/last", b"L" * 300)  # and appending goes on cleanly
        kernel.close()
        kernel.start()
        assert fs.read_file("/v/last") == b"L" * 300
        kernel.close()


@pytest.mark.parametrize("fsync", ["always", "batch"])
def test_records_end_where_the_preallocated_zeros_begin(tmp_path: Path, fsync: str) -> None:
    """A journal that will be fsynced (now or by the batch timer) is zero-filled ahead of
    its log; loading finds the end of the log there, keeps the zeros as room (no cut)
    and appends into them."""
    loop = asyncio.new_event_loop()  # for the batch timer (it never runs: closes sync)
    kernel = FakeKernel(tmp_path, loop, fsync=fsync)
    kernel.api.mkdir("/v")
    kernel.api.write_file("/v/f", b"first")
    journal = journal_of(tmp_path, "v")
    length = journal.stat().st_size
    assert length >= journal_end(kernel, "v") + PREALLOC_MIN
    kernel.close()
    kernel.start()
    assert journal.stat().st_size == length  # zeros are room, not damage
    kernel.api.write_file("/v/g", b"second")
    assert journal.stat().st_size == length  # written into the room: no new size
    kernel.close()
    kernel.start()
    assert kernel.api.read_file("/v/f") == b"first"
    assert kernel.api.read_file("/v/g") == b"second"
    kernel.close()
    loop.close()


def test_a_journal_never_fsynced_keeps_no_room(tmp_path: Path) -> None:
    """Under ``fsync = "never"`` zeros ahead of the log would only cost writes."""
    kernel = FakeKernel(tmp_path, fsync="never")
    kernel.api.mkdir("/v")
    kernel.api.write_file("/v/f", b"first")
    assert journal_of(tmp_path, "v").stat().st_size == journal_end(kernel, "v")
    kernel.close()


@pytest.mark.parametrize("where", ["last", "middle"])
def test_a_corrupt_record_loses_only_what_follows_it(tmp_path: Path, where: str) -> None:
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    offsets = []
    journal = journal_of(tmp_path, "v")
    for i in range(4):
        offsets.append(journal_end(kernel, "v"))
        kernel.api.write_file(f"/v/f{i}", b"payload %d" % i)
    kernel.close()
    bad = 3 if where == "last" else 1
    with open(journal, "r+b") as fh:
        fh.seek(offsets[bad] + 12)  # inside the payload: the CRC no longer matches
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    kernel.start()
    assert kernel.api.listdir("/v") == [f"f{i}" for i in range(bad)]
    assert journal.stat().st_size == offsets[bad]
    kernel.close()


def test_a_crash_in_the_middle_of_a_snapshot_recovers(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path)
    populate(kernel, 4)
    before = whole_tree(kernel, "v")
    kernel.close()
    directory = volume_dir(tmp_path, "v")
    # The state right after "create the next journal" and a half-written snapshot:
    (directory / "journal.1").write_bytes(b"")
    (directory / "snapshot.tmp").write_bytes(b"half a snapshot")
    kernel.start()
    assert whole_tree(kernel, "v") == before
    kernel.close()


def test_release_and_load_hand_a_slot_to_another_kernel(tmp_path: Path) -> None:
    first = FakeKernel(tmp_path, fsync="never")
    populate(first, 5)
    first.api.mkdir("/other")
    before = whole_tree(first, "v")
    slot = key_slot("v")
    first.fs.release_slot(slot)
    assert "v" not in first.api.listdir("/") and "other" in first.api.listdir("/")
    second = FakeKernel(tmp_path, slots=set())  # the farm's kernels share the data dir
    assert second.api.listdir("/") == []
    second.slots = {slot}
    second.fs.load_slots([slot])
    assert second.api.listdir("/") == ["v"]
    assert whole_tree(second, "v") == before
    second.api.write_file("/v/new", b"n")
    second.fs.release_slot(slot)
    first.fs.load_slots([slot])
    assert first.api.read_file("/v/new") == b"n"
    first.close()
    second.close()


def test_a_turn_shares_one_fsync_per_volume(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    kernel.api.mkdir("/w")
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    replies = kernel.turn([("fs.write_file", f"/v/f{i}", b"x") for i in range(10)]
                          + [("fs.write_file", "/w/g", b"y"), ("fs.stat", "/v")])
    assert replies[:11] == [None] * 11
    assert len(synced) == 2  # one per volume, not one per write
    kernel.turn([("fs.stat", "/v/f1"), ("fs.read_file", "/w/g")])
    assert len(synced) == 2  # reads need no flush
    kernel.close()


def test_never_writes_every_turn_but_fsyncs_only_on_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(tmp_path, fsync="never")
    kernel.api.mkdir("/v")
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    kernel.api.write_file("/v/f", b"data")
    assert synced == [] and journal_of(tmp_path, "v").stat().st_size > 0
    kernel.api.fsync("/v/f")
    assert len(synced) == 1
    assert kernel.errno_of("fs.fsync", "/v/missing") == errno.ENOENT
    kernel.close()


@pytest.mark.asyncio
async def test_batch_fsyncs_on_a_timer(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(tmp_path, loop=asyncio.get_running_loop(), fsync="batch",
                        batch_interval_ms=1)
    kernel.api.mkdir("/v")
    synced = asyncio.Event()
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.set()
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    kernel.api.write_file("/v/f", b"data")
    assert not synced.is_set()  # the reply did not wait for the fsync
    await asyncio.wait_for(synced.wait(), timeout=10)
    kernel.close()


def test_a_failed_flush_acknowledges_nothing_and_stops_the_volume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    kernel.api.mkdir("/w")
    kernel.api.write_file("/v/kept", b"durable")

    def full_disk(fd: int, buffers: Any, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full_disk)
    assert kernel.errno_of("fs.write_file", "/v/lost", b"x") == errno.ENOSPC
    monkeypatch.undo()
    assert kernel.errno_of("fs.read_file", "/v/kept") == errno.EIO  # out of service
    assert kernel.errno_of("fs.write_file", "/v/other", b"x") == errno.EIO
    kernel.api.write_file("/w/fine", b"other volumes keep serving")
    kernel.crash()  # as the kernel's exit and restart would
    assert kernel.api.read_file("/v/kept") == b"durable"
    assert kernel.errno_of("fs.stat", "/v/lost") == errno.ENOENT
    assert kernel.api.read_file("/w/fine") == b"other volumes keep serving"
    kernel.close()


def test_an_unreadable_snapshot_fails_its_volume_loudly_not_the_kernel(tmp_path: Path) -> None:
    """Nothing of ``v`` can be read (its snapshot's header is gone): every call on it is
    EIO naming the damage; a snapshot damaged further in is salvaged read-only instead
    (test_fs_salvage)."""
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    kernel.api.mkdir("/w")
    kernel.api.write_file("/w/f", b"fine")
    kernel.close()
    snapshot = volume_dir(tmp_path, "v") / "snapshot"
    snapshot.write_bytes(b"\0" * 3 + snapshot.read_bytes()[3:])
    kernel.start()
    assert kernel.api.listdir("/") == ["v", "w"]  # still there: not silently empty
    assert kernel.errno_of("fs.listdir", "/v") == errno.EIO
    assert kernel.errno_of("fs.mkdir", "/v") == errno.EEXIST
    assert kernel.api.read_file("/w/f") == b"fine"
    assert kernel.fs.stats()["failed"] == 1
    assert "recovery failed" in kernel.fs.stats()["damaged"]["v"]
    kernel.close()


def test_interrupted_volume_creation_and_removal_leave_nothing_behind(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    kernel.close()
    slot_dir = volume_dir(tmp_path, "v").parent
    (slot_dir / (store.CREATING + "x")).mkdir()
    (slot_dir / (store.REMOVING + "y")).mkdir()
    (slot_dir / (store.REMOVING + "y") / "journal.0").write_bytes(b"junk")
    kernel.start()
    assert sorted(p.name for p in slot_dir.iterdir()) == [volume_dir(tmp_path, "v").name]
    kernel.api.rmdir("/v")
    assert not volume_dir(tmp_path, "v").exists()
    kernel.api.mkdir("/v")  # and the name can be made again, empty
    assert kernel.api.listdir("/v") == []
    kernel.close()


def test_many_volumes_keep_few_descriptors_open(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, open_journals=3)
    names = [f"vol{i}" for i in range(10)]
    for name in names:
        kernel.api.mkdir(f"/{name}")
        kernel.api.write_file(f"/{name}/f", name.encode())
    assert sum(v.journal.is_open for v in kernel.fs.volumes.values()) == 3
    kernel.crash()
    assert [kernel.api.read_file(f"/{n}/f") for n in names] == [n.encode() for n in names]
    kernel.close()
