"""A journal keeps only the end of its log in the page cache (:mod:`kernelfarm.fs.journal`).

A stream's journal only grows; if every page it wrote stayed cached, each write would
fill fresh page-cache pages, which on a VM whose host takes free memory back cost a fault
and a zeroing in the host each (benchmarks/README.md, "The write path, sixth pass").  The
journal drops what is written back behind :data:`~kernelfarm.fs.journal.CACHED_BEHIND`,
so its next writes reuse those pages.  These tests count the journal's resident pages
with ``mincore`` after a stream of 1 MiB ``fs.pwrite`` calls through the fs handler.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest
from fs_harness import FakeKernel

from kernelfarm.fs import journal

MIB = 1024 * 1024
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def resident_pages(path: str) -> list[bool]:
    """Whether each page of ``path`` is in the page cache (``mincore`` of a mapping that
    is never touched, so the check itself brings nothing in)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            vec = ctypes.create_string_buffer((size + PAGE - 1) // PAGE)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return [bool(byte & 1) for byte in vec.raw]
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


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
