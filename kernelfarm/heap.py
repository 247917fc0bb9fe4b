"""A process keeps the memory its freed big blocks held, for the next ones (glibc only).

A file streamed into a kernel keeps each request's data as it came
(:mod:`kernelfarm.fs.chunks`): 1 MiB blocks that glibc's malloc takes from the top of its
heap; a mount holds each 1 MiB FUSE write (pyfuse3's ``bytes``) until the farm has it.
When such blocks are freed (a file unlinked, rewritten, its slot given away; a write
answered) glibc by default hands the top of the heap back to the host as soon as more
than twice its mmap threshold (a few MiB, adapted as it goes) is free there; the next
stream takes the memory back a page fault at a time, and the host zeroes every page
first -- on this project's VMs, whose balloon reports free memory to the host, that is a
fault in the host too.  Under ``benchmarks/stream_bench.py`` perf found 31% of the
kernel's CPU in ``clear_page`` below ``sysmalloc``; some mount processes faulted 17-35k
pages per 256 MiB written through them (where small live blocks happen to sit in the heap
decides whether its top can be trimmed).

So kernels and mounts start with malloc told (``mallopt``) to keep up to ``keep`` bytes
free at the top of the heap: ``M_TRIM_THRESHOLD`` (trim only once more is free) *and*
``M_TOP_PAD`` (how much a trim leaves: glibc trims down to the pad, 128 KiB by default,
so the threshold alone kept nothing once a freed file was bigger than it), and to take
blocks up to :data:`MMAP_ABOVE` from the heap (``M_MMAP_THRESHOLD``: a block mapped on its
own is unmapped when freed, the same zeroing again).  Setting them stops glibc adapting
them, so all are set.  What it costs: after its files are deleted a process's resident
memory stays up to ``keep`` above what it holds, as with allocators that keep freed
memory by design; its heap also grows ``keep`` at a time (address space, not memory:
pages are taken when first touched).  Where the C library is not glibc nothing is
changed.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KEEP_BYTES = 256 * MIB
"""Free memory a kernel keeps at the top of its heap (a few files' worth of streamed data)."""
MMAP_ABOVE = 32 * MIB
"""Blocks at least this big get a mapping of their own: glibc's largest threshold on
64-bit hosts (a bigger value is refused)."""
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
"""glibc's ``mallopt`` parameters (``<malloc.h>``)."""


def glibc() -> bool:
    """Whether this process runs on glibc (whose ``mallopt`` parameters these are)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):  # not a name this C library knows: not glibc
        return False


def keep_freed_memory(keep: int = KEEP_BYTES) -> bool:
    """Tell glibc's malloc to keep up to ``keep`` freed bytes for reuse; False where the
    C library is not glibc (nothing changed) or refuses."""
    if not glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if any(mallopt(param, value) != 1 for param, value in (
            (M_MMAP_THRESHOLD, MMAP_ABOVE), (M_TRIM_THRESHOLD, keep), (M_TOP_PAD, keep))):
        log.warning("malloc refused its thresholds: freed memory goes back to the host")
        return False
    return True
