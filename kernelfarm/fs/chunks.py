"""A file's content as the pieces it was appended in: a stream costs no copy in memory.

A program streaming a file through the farm (``cp`` of a big file through the mount)
sends it as 1 MiB ``fs.pwrite`` calls at the end of the file.  Copying each into one
growing ``bytearray`` was the biggest cost of such a write in the kernel (the copy, the
page faults of fresh memory, and ``realloc`` moving the whole buffer as it grew: 40% of
the kernel's CPU per MiB).  A file that grows by a big append (:data:`BIG`) instead keeps
the request's ``bytes`` objects as they are, in order (the journal holds the same
objects until its flush: :meth:`.journal.Journal.append_parts`); small appends after
that are gathered in a ``bytearray`` piece of the file's own.  Reads copy once, from
views of the pieces.  Any other change (an overwrite, a truncate, a write past the end)
turns the file back into one ``bytearray`` (:mod:`.tree`) at the cost of one copy.
"""

from __future__ import annotations

from bisect import bisect_right

BIG = 64 * 1024
"""An append at least this big is kept as it is (a smaller one is copied)."""


class Chunks:
    __slots__ = ("pieces", "ends")

    def __init__(self, pieces: list[bytes | bytearray]) -> None:
        self.pieces = [piece for piece in pieces if piece]
        self.ends: list[int] = []  # where each piece ends in the file
        end = 0
        for piece in self.pieces:
            end += len(piece)
            self.ends.append(end)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(len(self))
        return self.read(start, max(0, stop - start))

    def joined(self) -> bytearray:
        """The whole content as one ``bytearray`` (one copy)."""
        return bytearray().join(self.pieces)

    def append(self, data: bytes) -> None:
        """Add ``data`` at the end: kept as it is if big, else copied into a piece of
        the file's own (never into a request's bytes)."""
        last = self.pieces[-1] if self.pieces else None
        if len(data) < BIG and type(last) is bytearray:
            last += data
            self.ends[-1] += len(data)
            return
        self.pieces.append(data if len(data) >= BIG else bytearray(data))
        self.ends.append(len(self) + len(data))

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``offset`` to ``offset + length`` (clamped to the size), copied once."""
        end = min(len(self), offset + length)
        if offset >= end:
            return b""
        ends = self.ends
        index = bisect_right(ends, offset)
        pieces = []
        while offset < end:
            piece = self.pieces[index]
            start = ends[index] - len(piece)
            stop = min(end, ends[index])
            pieces.append(memoryview(piece)[offset - start:stop - start])
            offset = stop
            index += 1
        return b"".join(pieces)
