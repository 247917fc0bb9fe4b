"""A kernel keeps the memory its deleted files freed, for the next writes (glibc only).

A file streamed into a kernel keeps each request's data as it came
(:mod:`kernelfarm.fs.chunks`): 1 MiB blocks that glibc's malloc takes from the top of its
heap.  When such a file goes (unlinked, rewritten, its slot given away) glibc by default
hands the top of the heap back to the host as soon as more than twice its mmap threshold
(a few MiB, adapted as it goes) is free there; the next stream takes the memory back a
page fault at a time, and the host zeroes every page first.  Under
``benchmarks/stream_bench.py`` (files of 128 MiB written and deleted, ``fsync = "never"``)
perf found 31% of the kernel's CPU in the host's ``clear_page`` below ``sysmalloc``,
against 20% in the journal's one copy of the data into the page cache.

So a kernel boots with malloc told (``mallopt``) to keep up to :data:`KEEP_BYTES` free at
the top of its heap (``M_TRIM_THRESHOLD``) and to take blocks up to :data:`MMAP_ABOVE`
from the heap (``M_MMAP_THRESHOLD``: a block mapped on its own is unmapped when freed,
the same zeroing again).  Setting them stops glibc adapting them, so both are set.  What
it costs: after its files are deleted a kernel's resident memory stays up to
:data:`KEEP_BYTES` above what it holds, as with allocators that keep freed memory by
design.  Where the C library is not glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KEEP_BYTES = 256 * MIB
"""Free memory kept at the top of a kernel's heap (a few files' worth of streamed data)."""
MMAP_ABOVE = 32 * MIB
"""Blocks at least this big get a mapping of their own: glibc's largest threshold on
64-bit hosts (a bigger value is refused)."""
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (``<malloc.h>``)."""


def glibc() -> bool:
    """Whether this process runs on glibc (whose ``mallopt`` parameters these are)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):  # not a name this C library knows: not glibc
        return False


def keep_freed_memory(keep: int = KEEP_BYTES) -> bool:
    """Tell glibc's malloc to keep up to ``keep`` freed bytes for reuse; False (and
    nothing changed) where the C library is not glibc or refuses."""
    if not glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE) != 1 or mallopt(M_TRIM_THRESHOLD, keep) != 1:
        log.warning("malloc refused its thresholds: freed memory goes back to the host")
        return False
    return True
