"""Read-ahead alone (:mod:`kernelfarm.mount.readahead`), with a farm whose answers the
test releases: two reads of one file in flight at once."""

from __future__ import annotations

import asyncio

import pytest

from kernelfarm.mount.readahead import ReadAhead

BLOCK = 8


@pytest.mark.asyncio
async def test_a_read_across_blocks_keeps_them_while_a_later_read_moves_on() -> None:
    """A read spanning blocks 1 and 2 waits for block 1 while a read further on (block
    3) forgets the blocks before its own: the first read must still get block 2 (it was
    answered EIO, a ``KeyError``, under load)."""
    answers = [asyncio.Event() for _ in range(8)]

    async def fetch(offset: int, size: int) -> bytes:
        index = offset // BLOCK
        await answers[index].wait()
        return bytes([index]) * size

    ahead = ReadAhead(fetch, BLOCK, depth=3)
    answers[0].set()
    async with asyncio.timeout(10):
        assert bytes(await ahead.read(0, 4)) == b"\0" * 4  # in order: 1-3 fetched ahead
        across = asyncio.ensure_future(ahead.read(12, BLOCK))  # bytes 12..19: blocks 1, 2
        await asyncio.sleep(0)
        later = asyncio.ensure_future(ahead.read(24, 4))  # block 3, fetched ahead
        await asyncio.sleep(0)
        for answer in answers:
            answer.set()
        assert bytes(await across) == b"\1" * 4 + b"\2" * 4
        assert bytes(await later) == b"\3" * 4
