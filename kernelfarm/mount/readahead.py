"""Read-ahead: a file read in order is fetched ahead in blocks, several in flight.

The kernel asks for 128 KiB at a time; one ``fs.pread`` round trip each would make a
sequential read wait on the farm for every 128 KiB.  Once reads of a file follow each
other, :class:`ReadAhead` keeps the next ``depth`` blocks of ``block_bytes`` on their way
and answers the kernel from them; a read elsewhere (random access) goes straight to the
farm.  The blocks are forgotten whenever this mount changes the file (write, truncate)
and at its last close: what another client writes is seen at the next open, as the page
cache is (close-to-open).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

Fetch = Callable[[int, int], Awaitable[bytes | bytearray]]


def _quiet(task: asyncio.Task[bytes | bytearray]) -> None:
    """A forgotten block's failure is nobody's to report (a read that wants it refetches)."""
    if not task.cancelled():
        task.exception()


class ReadAhead:
    def __init__(self, fetch: Fetch, block_bytes: int, depth: int) -> None:
        self._fetch = fetch
        self._block = block_bytes
        self._depth = depth
        self._blocks: dict[int, asyncio.Task[bytes | bytearray]] = {}
        self._next = 0          # where the next read starts if reading is sequential
        self._end: int | None = None  # first block past the end of the file, once seen

    async def read(self, offset: int, size: int) -> bytes | bytearray | memoryview:
        """``size`` bytes at ``offset`` (fewer at the end of the file); a slice of a block
        is a view of it, which pyfuse3 copies straight into its reply."""
        first, last = offset // self._block, (offset + size - 1) // self._block
        sequential = offset == self._next or first in self._blocks
        self._next = offset + size
        if not sequential or size <= 0:
            return await self._fetch(offset, size)
        for index in [i for i in self._blocks if i < first]:
            del self._blocks[index]  # done with; a read still awaiting one keeps its task
        stop = last + 1 + self._depth
        if self._end is not None:
            stop = min(stop, max(self._end, last + 1))
        for index in range(first, stop):
            if index not in self._blocks:
                task = asyncio.ensure_future(self._fetch(index * self._block, self._block))
                task.add_done_callback(_quiet)
                self._blocks[index] = task
        # The tasks are taken before any is awaited: meanwhile a read further on may
        # forget the blocks before its own (and a change forgets all of them).
        wanted = [self._blocks[index] for index in range(first, last + 1)]
        try:
            parts = [await task for task in wanted]
        except Exception:
            self.drop()
            raise
        for index, part in zip(range(first, last + 1), parts, strict=True):
            if len(part) < self._block:
                self._end = index + 1
        start = offset - first * self._block
        if len(parts) == 1:  # the kernel's reads never straddle a block: no copy
            return memoryview(parts[0])[start:start + size]
        return b"".join(parts)[start:start + size]

    def drop(self) -> None:
        """Forget every block: the file changed."""
        self._blocks.clear()
        self._end = None
