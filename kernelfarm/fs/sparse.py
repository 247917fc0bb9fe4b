"""A file's content with holes that take no memory.

``fs.truncate(path, 64 MiB)`` or a ``pwrite`` far past the end must not allocate the zeros
in between (issue 11: four 40-byte truncates took a kernel from 111 MB to 373 MB).  A file
whose change would leave a hole keeps its bytes in :class:`Sparse`: fixed-size blocks in a
dict, where a missing block reads as zeros.  Files written whole (the common case) stay
plain ``bytes``; see :mod:`.tree`.  The journal already carries holes compactly (a
``truncate`` record holds a size, a ``pwrite`` its data); a snapshot stores a sparse file
as its size and its blocks (:mod:`.snapshot`).
"""

from __future__ import annotations

from typing import Iterator

BLOCK = 64 * 1024


class Sparse:
    __slots__ = ("size", "blocks", "block")

    def __init__(self, size: int = 0, block: int = BLOCK) -> None:
        self.size = size
        self.block = block
        self.blocks: dict[int, bytearray] = {}  # index -> ``block`` bytes; absent: zeros

    @classmethod
    def from_bytes(cls, data: bytes | bytearray, block: int = BLOCK) -> Sparse:
        sparse = cls(0, block)
        sparse.write(0, data)
        return sparse

    @classmethod
    def from_extents(cls, size: int, extents: list[tuple[int, bytes]]) -> Sparse:
        sparse = cls(0)
        for offset, data in extents:
            sparse.write(offset, data)
        sparse.truncate(size)
        return sparse

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.read(0, self.size)

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(self.size)
        return self.read(start, max(0, stop - start))

    def extents(self) -> Iterator[tuple[int, bytes]]:
        """``(offset, bytes)`` of every block that is not a hole, cut at the size."""
        for index in sorted(self.blocks):
            offset = index * self.block
            yield offset, bytes(self.blocks[index][:self.size - offset])

    def read(self, offset: int, length: int) -> bytes:
        """The bytes, copied once (joined from views of the blocks, zeros for holes)."""
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        block = self.block
        pieces: list[bytes | memoryview] = []
        for index in range(offset // block, (end - 1) // block + 1):
            lo, hi = max(offset, index * block), min(end, (index + 1) * block)
            data = self.blocks.get(index)
            if data is None:
                pieces.append(bytes(hi - lo))
            else:
                pieces.append(memoryview(data)[lo - index * block:hi - index * block])
        return b"".join(pieces)

    def write(self, offset: int, data: bytes | bytearray) -> None:
        block, end = self.block, offset + len(data)
        view = memoryview(data)
        for index in range(offset // block, (end - 1) // block + 1 if data else 0):
            buf = self.blocks.get(index)
            if buf is None:
                buf = self.blocks[index] = bytearray(block)
            lo, hi = max(offset, index * block), min(end, (index + 1) * block)
            buf[lo - index * block:hi - index * block] = view[lo - offset:hi - offset]
        self.size = max(self.size, end)

    def truncate(self, size: int) -> None:
        """Cut to ``size`` or extend with a hole; bytes past a cut read as zeros again."""
        if size < self.size:
            block = self.block
            for index in [i for i in self.blocks if i * block >= size]:
                del self.blocks[index]
            last = self.blocks.get(size // block)
            if last is not None:
                cut = size - (size // block) * block
                last[cut:] = bytes(block - cut)
        self.size = size
