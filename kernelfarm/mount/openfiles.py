"""The files open in the mount: their handles, the writes each has on its way to the farm
(:mod:`.writeback`) and the blocks read ahead for it (:mod:`.readahead`), under one
in-flight budget for the whole mount.

FUSE names an open file by a handle and the farm by a path: a file's writes and reads
leave under the path its inode has when they leave (``inodes.path``), so a rename while
the file is open moves them along.  A file's state lives from its first open to its last
close; :class:`~.operations.FarmOperations` asks here whether a file has writes on their
way (its attributes are then the mount's own) and waits here for them when a call must
find them on the farm.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyfuse3

from kernelfarm.mount.inodes import InodeTable
from kernelfarm.mount.readahead import ReadAhead
from kernelfarm.mount.writeback import InflightBudget, WriteBehind

READAHEAD_BLOCK_BYTES = 1024 * 1024
READAHEAD_DEPTH = 4


class OpenFiles:
    def __init__(self, fs: Any, inodes: InodeTable, chunk_bytes: int,
                 inflight_bytes: int) -> None:
        self.fs = fs
        self.inodes = inodes
        self.chunk_bytes = chunk_bytes
        self.budget = InflightBudget(inflight_bytes)
        self.pending: dict[int, WriteBehind] = {}  # inode -> writes not answered yet
        self.ahead: dict[int, ReadAhead] = {}      # inode -> blocks read ahead
        self.handles: dict[int, int] = {}          # file handle -> inode
        self.opens: dict[int, int] = {}            # inode -> open handles
        self.unlinked: set[int] = set()            # open, unlinked, hidden until last close
        self._next_fh = 1

    def new_handle(self) -> int:
        """A handle number never given before (files and directory listings share them)."""
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        return fh

    def open(self, ino: int) -> pyfuse3.FileInfo:
        fh = self.new_handle()
        self.handles[fh] = ino
        self.opens[ino] = self.opens.get(ino, 0) + 1
        # The page cache is dropped at every open: another client's change made while the
        # file was closed is seen at the next open (close-to-open, as NFS).
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False)

    def last_close(self, ino: int) -> bool:
        """One handle of ``ino`` closed; at its last, its state goes.  Whether that was
        the last close of a file unlinked while open (its hidden name is to be removed)."""
        self.opens[ino] -= 1
        if self.opens[ino]:
            return False
        del self.opens[ino]
        self.pending.pop(ino, None)
        self.ahead.pop(ino, None)
        if ino in self.unlinked:
            self.unlinked.discard(ino)
            return True
        return False

    def idle(self, ino: int) -> bool:
        """No write or change of the file on its way."""
        behind = self.pending.get(ino)
        return behind is None or behind.idle

    def with_pending(self, ino: int, st: dict[str, Any]) -> dict[str, Any]:
        """``st`` with the size grown by the writes still on their way."""
        behind = self.pending.get(ino)
        if behind is not None and not behind.idle and behind.end() > st["size"]:
            st = {**st, "size": behind.end()}
        return st

    def behind(self, ino: int) -> WriteBehind:
        behind = self.pending.get(ino)
        if behind is None:
            async def send(offset: int, data: bytes | bytearray) -> object:
                return await self.fs.pwrite(self.inodes.path(ino), offset, data)

            behind = self.pending[ino] = WriteBehind(send, self.budget, self.chunk_bytes)
        return behind

    def read_ahead(self, ino: int) -> ReadAhead:
        ahead = self.ahead.get(ino)
        if ahead is None:
            async def fetch(offset: int, size: int) -> bytes | bytearray:
                data: bytes | bytearray = await self.fs.pread_buffer(
                    self.inodes.path(ino), offset, size)
                return data

            ahead = self.ahead[ino] = ReadAhead(fetch, READAHEAD_BLOCK_BYTES,
                                                READAHEAD_DEPTH)
        return ahead

    def drop_read_ahead(self, ino: int) -> None:
        """The file changes: blocks read ahead of it are stale."""
        ahead = self.ahead.get(ino)
        if ahead is not None:
            ahead.drop()

    async def drain(self, ino: int) -> None:
        """The file's writes on the farm, and the first refused one's error (kept even
        when the refusal came in before this call, with nothing on its way any more)."""
        behind = self.pending.get(ino)
        if behind is not None:
            await behind.drain()

    async def settle(self, ino: int) -> None:
        """The file's writes answered, for a call that must find its data on the farm
        (lookup, read, a truncate...); a refused one's error stays for the file's next
        write, close or fsync, the calls that report it."""
        behind = self.pending.get(ino)
        if behind is not None and not behind.idle:
            await behind.settle()

    async def settle_all(self) -> None:
        """Every file's writes answered (a rename or removal changes the paths they name);
        their errors stay for their own files."""
        await asyncio.gather(*(behind.settle() for behind in self.pending.values()
                               if not behind.idle))

    async def drain_all(self) -> None:
        """Every pending write of the mount on the farm (the first error is raised)."""
        busy = [behind.drain() for behind in self.pending.values() if not behind.idle]
        for result in await asyncio.gather(*busy, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
