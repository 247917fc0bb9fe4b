"""Snapshots written by a forked child: the loop goes on, the tree as of the switch is
what the snapshot holds, and every crash point recovers every acknowledged change."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Callable

import pytest
from fs_harness import FakeKernel

from kernelfarm.fs import snapshot, store
from kernelfarm.fs.journal import TRUNCATE_STEP, removing
from kernelfarm.partition import key_slot
from kernelfarm.supervisor.handle import kernel_environ

MIB = 1024 * 1024


def volume_dir(data_dir: Path, name: str) -> Path:
    return Path(store.slot_dir(data_dir, key_slot(name))) / store.volume_dirname(name)


def files_of(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def until(predicate: object, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_snapshot_is_written_by_a_child_while_the_kernel_goes_on(
        tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, loop=asyncio.get_running_loop(),
                        snapshot_journal_bytes=MIB)
    fs, directory = kernel.api, volume_dir(tmp_path, "v")
    fs.mkdir("/v")
    fs.write_file("/v/big", b"b" * (2 * MIB))   # the journal passes 1 MiB: a snapshot
    jobs = kernel.fs._snapshots.writer.jobs
    assert len(jobs) == 1                        # the flush returned; a child writes it
    (job,) = jobs.values()
    assert job.pid != os.getpid()
    fs.write_file("/v/after", b"during the snapshot")  # served meanwhile, next journal
    snapshotter = kernel.fs._snapshots.writer
    await until(lambda: not jobs and not snapshotter.removals)
    assert kernel.fs.stats()["snapshots"] == 1
    assert files_of(directory) == ["VOLUME", "journal.1", "snapshot"]
    tree, generation = snapshot.load(str(directory / "snapshot"), kernel.fs.limits)
    assert generation == 1 and sorted(tree.root.entries) == ["big"]  # as of the switch
    kernel.crash()
    assert kernel.api.read_file("/v/big") == b"b" * (2 * MIB)
    assert kernel.api.read_file("/v/after") == b"during the snapshot"
    kernel.close()


@pytest.mark.asyncio
async def test_a_crash_while_the_child_writes_loses_nothing(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, loop=asyncio.get_running_loop(),
                        snapshot_journal_bytes=MIB)
    fs, directory = kernel.api, volume_dir(tmp_path, "v")
    fs.mkdir("/v")
    fs.write_file("/v/big", b"b" * (2 * MIB))
    fs.write_file("/v/after", b"in journal.1")
    kernel.fs._snapshots.writer.close()  # the kernel dies: its child is killed with it
    assert "journal.0" in files_of(directory) and "journal.1" in files_of(directory)
    kernel.crash()                   # recovery replays journal.0, then journal.1
    assert kernel.api.read_file("/v/big") == b"b" * (2 * MIB)
    assert kernel.api.read_file("/v/after") == b"in journal.1"
    assert not any(name.startswith("snapshot.tmp") for name in files_of(directory))
    kernel.close()


@pytest.mark.asyncio
async def test_a_failed_child_leaves_the_journals_whole(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, loop=asyncio.get_running_loop(),
                        snapshot_journal_bytes=MIB)
    fs, directory = kernel.api, volume_dir(tmp_path, "v")
    fs.mkdir("/v")
    os.mkdir(directory / "snapshot.tmp.1")  # where the child must write: it fails
    fs.write_file("/v/big", b"b" * (2 * MIB))
    await until(lambda: not kernel.fs._snapshots.writer.jobs)
    os.rmdir(directory / "snapshot.tmp.1")
    assert kernel.fs.stats()["snapshot_failures"] == 1
    fs.write_file("/v/after", b"still written")
    kernel.crash()
    assert kernel.api.read_file("/v/big") == b"b" * (2 * MIB)
    assert kernel.api.read_file("/v/after") == b"still written"
    kernel.close()


def fsyncs_of(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every fsync and fdatasync this process makes from now on (a forked child's are
    its own: they land in the child's copy of the list)."""
    calls: list[str] = []

    def recorded(name: str) -> Callable[[int], None]:
        real = getattr(os, name)

        def call(fd: int) -> None:
            calls.append(name)
            real(fd)
        return call

    for name in ("fsync", "fdatasync"):
        monkeypatch.setattr(os, name, recorded(name))
    return calls


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["never", "always"])
async def test_with_fsync_never_starting_a_snapshot_syncs_nothing_on_the_loop(
        tmp_path: Path, policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(tmp_path, loop=asyncio.get_running_loop(),
                        snapshot_journal_bytes=MIB, fsync=policy)
    fs = kernel.api
    fs.mkdir("/v")
    calls = fsyncs_of(monkeypatch)
    fs.write_file("/v/big", b"b" * (2 * MIB))   # its flush starts the snapshot
    assert len(kernel.fs._snapshots.writer.jobs) == 1
    if policy == "never":
        # The old journal's 2 MiB are fdatasynced by the child, off the loop.
        assert calls == []
    else:  # the write itself, and the new journal's file and name (the test can fail)
        assert calls.count("fdatasync") == 1 and calls.count("fsync") == 2
    snapshotter = kernel.fs._snapshots.writer
    await until(lambda: not snapshotter.jobs and not snapshotter.removals)
    monkeypatch.undo()
    kernel.crash()
    assert kernel.api.read_file("/v/big") == b"b" * (2 * MIB)
    kernel.close()


def test_a_superseded_journal_is_removed_a_step_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "journal.0"
    path.write_bytes(b"j" * (2 * TRUNCATE_STEP + 5))
    steps = removing(str(path))
    sizes = []
    for _ in steps:
        sizes.append(path.stat().st_size)
    assert sizes == [TRUNCATE_STEP + 5, 5]  # blocks freed a step at a time, ...
    assert not path.exists()                # ... then the name
    assert list(removing(str(path))) == []  # already gone: nothing to do


def test_kernels_run_malloc_on_huge_pages_keeping_the_users_tunables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps a snapshot's fork cheap (see kernelfarm.supervisor.handle)."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert kernel_environ()["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert kernel_environ()["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    assert kernel_environ()["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"
