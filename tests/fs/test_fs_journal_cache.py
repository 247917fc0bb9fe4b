"""A journal keeps only the end of its log in the page cache (:mod:`kernelfarm.fs.journal`).

A stream's journal only grows; if every page it wrote stayed cached, each write would
fill fresh page-cache pages, which on a VM whose host takes free memory back cost a fault
and a zeroing in the host each (benchmarks/README.md, "The write path, sixth pass").  The
journal drops what is written back behind :data:`~kernelfarm.fs.journal.CACHED_BEHIND`,
so its next writes reuse those pages.  These tests count the journal's resident pages
with ``mincore`` after a stream of 1 MiB ``fs.pwrite`` calls through the fs handler.

A kernel with a syncer child runs the drops there, unanswered
(:meth:`kernelfarm.kernel.syncer.Syncer.drop_behind`): the writeback a drop starts can wait
on the disk for milliseconds, which the loop must not; the syncs' answers, which release
held replies, must come exactly as before.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from farmctl import start_farm, wait_until
from fs_harness import FakeKernel
from pagecache import PAGE, resident_pages

from kernelfarm.fs import journal
from kernelfarm.kernel.syncer import Syncer

MIB = 1024 * 1024


def journal_file(kernel: FakeKernel, volume: str) -> str:
    return kernel.fs.volumes[volume].journal.path


@pytest.mark.parametrize("guard", ["on", "switched off"])
def test_a_streamed_journal_keeps_only_its_end_in_the_page_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guard: str) -> None:
    """24 MiB streamed as 1 MiB pwrites, 4 per turn (the bounds scaled down to 4 MiB
    kept, a drop every 2 MiB, to keep the test fast), then ``fs.fsync`` (everything is
    written back) and one more step of the log: every page more than
    ``CACHED_BEHIND + 2 * DROP_STEP`` behind the end of the log is out of the page
    cache, and the data reads back the same after a restart (recovery reads the journal
    from disk).  ``switched off`` (no drop): the whole log stays cached, which the test
    catches."""
    monkeypatch.setattr(journal, "CACHED_BEHIND", 4 * MIB)
    monkeypatch.setattr(journal, "DROP_STEP", 2 * MIB)
    if guard == "switched off":
        monkeypatch.setattr(journal.Journal, "_drop_behind", lambda self, fd: None)
    kernel = FakeKernel(tmp_path, fsync="never", snapshot_journal_bytes=1024 * MIB)
    kernel.api.mkdir("/v")
    kernel.api.write_file("/v/big", b"")
    block = os.urandom(MIB)
    written = 0

    def stream(mib: int) -> None:
        nonlocal written
        for _ in range(mib // 4):
            kernel.turn([("fs.pwrite", "/v/big", written + n * MIB, block) for n in range(4)])
            written += 4 * MIB

    stream(24)
    kernel.api.fsync("/v/big")
    stream(4)
    path = journal_file(kernel, "v")
    pages = resident_pages(path)
    old = (kernel.fs.volumes["v"].journal.size - journal.CACHED_BEHIND
           - 2 * journal.DROP_STEP) // PAGE
    cached_old = sum(pages[:old])
    if guard == "on":
        assert cached_old <= 2, f"{cached_old} of {old} old pages still cached"
        assert sum(pages[old:]) * PAGE >= journal.CACHED_BEHIND  # the end stays
    else:
        assert cached_old == old
    kernel.restart()
    assert kernel.api.pread("/v/big", 0, 2 * MIB) == block * 2
    assert kernel.api.pread("/v/big", written - MIB, MIB) == block
    kernel.close()


@pytest.fixture
def syncer() -> Iterator[Syncer]:
    child = Syncer.fork()
    loop = asyncio.new_event_loop()
    try:
        yield child
    finally:
        child.close()
        loop.close()
    assert journal.dropper == journal.drop_cached  # given back with the syncer


def clean_file(path: Path, size: int) -> int:
    """A file of ``size`` bytes, written back (every page cached and clean); its fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, os.urandom(MIB) * (size // MIB), 0)
    os.fdatasync(fd)
    return fd


def test_a_drop_runs_in_the_child_and_is_never_answered(tmp_path: Path,
                                                        syncer: Syncer) -> None:
    """Drops sent alone and between two sync groups: the file's first 6 MiB leave the
    page cache (the rest stays), and each sync group gets exactly one answer, 0 -- a
    batch of drops alone sends nothing, which the kernel would read as the syncer gone."""
    answers: list[int] = []
    loop = asyncio.new_event_loop()
    try:
        syncer.watch(loop, answers.append)
        assert journal.dropper == syncer.drop_behind
        fd = clean_file(tmp_path / "journal", 8 * MIB)
        try:
            assert all(resident_pages(tmp_path / "journal"))
            syncer.drop_behind(fd, 2 * MIB)
            syncer.start([fd])
            syncer.drop_behind(fd, 6 * MIB)
            syncer.start([fd])
            syncer.wait()
            wait_until(lambda: not any(resident_pages(tmp_path / "journal")[:6 * MIB // PAGE]))
        finally:
            os.close(fd)
        assert all(resident_pages(tmp_path / "journal")[6 * MIB // PAGE:])
        assert answers == [0, 0]
        assert not syncer.busy
    finally:
        loop.close()


@pytest.mark.parametrize("where", ["syncer", "loop (switched off)"])
def test_a_kernel_with_a_syncer_drops_nothing_on_its_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncer: Syncer, where: str) -> None:
    """A stream through the fs handler with the drop bounds scaled down (4 MiB kept, a
    drop every 2 MiB): with the syncer watching, this process never calls
    ``posix_fadvise`` and the journal's old pages still leave the page cache (the child
    dropped them).  Switched off (no syncer watching), the drops run here."""
    calls: list[Any] = []
    real = os.posix_fadvise

    def posix_fadvise(*args: Any) -> None:
        calls.append(args)
        real(*args)

    monkeypatch.setattr(os, "posix_fadvise", posix_fadvise)
    monkeypatch.setattr(journal, "CACHED_BEHIND", 4 * MIB)
    monkeypatch.setattr(journal, "DROP_STEP", 2 * MIB)
    loop = asyncio.new_event_loop()
    try:
        if where == "syncer":
            syncer.watch(loop, lambda error: None)
        kernel = FakeKernel(tmp_path, fsync="never", snapshot_journal_bytes=1024 * MIB)
        kernel.api.mkdir("/v")
        kernel.api.write_file("/v/big", b"")
        block = os.urandom(MIB)
        for at in range(0, 24, 4):
            kernel.turn([("fs.pwrite", "/v/big", (at + n) * MIB, block) for n in range(4)])
        kernel.api.fsync("/v/big")
        for at in range(24, 28, 2):
            kernel.turn([("fs.pwrite", "/v/big", (at + n) * MIB, block) for n in range(2)])
        path = kernel.fs.volumes["v"].journal.path
        old = 16 * MIB // PAGE
        wait_until(lambda: sum(resident_pages(path)[:old]) <= 2)
        kernel.close()
    finally:
        loop.close()
    if where == "syncer":
        assert calls == []
    else:
        assert calls


def test_a_farm_kernel_drops_its_journal_behind_the_log(tmp_path: Path) -> None:
    """A real kernel process (with its syncer) takes 56 MiB of 1 MiB pwrites, an fsync,
    and 8 MiB more: its journal's first 24 MiB leave the page cache (the drop covers the
    log up to 32 MiB before its end), while the last 32 MiB stay (no snapshot
    meanwhile: one journal)."""
    with start_farm(tmp_path, 1, config_text="[fs]\nsnapshot_journal_bytes = 1073741824\n"
                    ) as farm:
        client = farm.client()
        client.fs.mkdir("/v")
        block = os.urandom(MIB)
        for name, mib in (("a", 56), ("b", 8)):
            client.fs.write_file(f"/v/{name}", b"")
            for n in range(mib):
                client.fs.pwrite(f"/v/{name}", n * MIB, block)
            if name == "a":
                client.fs.fsync("/v/a")
        (path,) = (farm.data_dir / "fs").glob("*/*/journal.*")
        wait_until(lambda: not any(resident_pages(path)[:24 * MIB // PAGE]))
        assert sum(resident_pages(path)[-32 * MIB // PAGE:]) * PAGE >= 24 * MIB
        assert client.fs.pread("/v/a", 55 * MIB, MIB) == block
