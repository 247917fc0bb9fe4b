"""The FUSE descriptor's readiness (``mount/fusefd.py``) on a pipe standing in for
``/dev/fuse``, on uvloop as in the mount: one registration with the loop serves request
after request (pyfuse3's own wait registers and removes it per request), a readable
descriptor nobody waits for is let go instead of spun on, and closing wakes the waiting
task with pyfuse3's error."""

from __future__ import annotations

import asyncio
import os
from typing import Iterator

import pyfuse3.asyncio
import pytest

from kernelfarm.mount.fusefd import FuseReadiness, install


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


async def steps(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_one_registration_serves_request_after_request(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    readiness = FuseReadiness()
    loop = asyncio.get_running_loop()

    async def serve() -> None:  # as pyfuse3 does: read in the step the wait returns
        for _ in range(5):
            loop.call_soon(os.write, write_end, b"r")  # the next request
            await readiness.wait_readable(read_end)
            assert os.read(read_end, 1) == b"r"
            await steps(3)  # polls with nothing to read

    await asyncio.wait_for(serve(), 5)
    assert readiness.watches == 1
    readiness.stop()


@pytest.mark.asyncio
async def test_the_next_task_takes_over_without_a_new_registration(
        pipe: tuple[int, int]) -> None:
    """pyfuse3's reader hands its lock to the next task, which waits a step later: a
    request already there meanwhile is kept for it, not let go and watched again."""
    read_end, write_end = pipe
    readiness = FuseReadiness()
    os.write(write_end, b"rs")

    async def reader(expected: bytes) -> None:
        await readiness.wait_readable(read_end)
        assert os.read(read_end, 1) == expected

    async def hand_over() -> None:
        await reader(b"r")
        await asyncio.ensure_future(reader(b"s"))  # the next task, one step later

    await asyncio.wait_for(hand_over(), 5)
    assert readiness.watches == 1
    readiness.stop()


@pytest.mark.asyncio
async def test_a_request_nobody_waits_for_is_let_go_then_taken(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    readiness = FuseReadiness()
    os.write(write_end, b"r")
    await asyncio.wait_for(readiness.wait_readable(read_end), 5)
    assert os.read(read_end, 1) == b"r"
    # Readable with no task waiting: left for one poll (the next waiter is usually
    # there by then), then let go, so the loop does not spin on it.
    os.write(write_end, b"s")
    await steps(5)
    assert readiness.watches == 1
    await asyncio.wait_for(readiness.wait_readable(read_end), 5)  # watched again
    assert os.read(read_end, 1) == b"s"
    assert readiness.watches == 2
    readiness.stop()


@pytest.mark.asyncio
async def test_closing_wakes_the_waiting_task(pipe: tuple[int, int]) -> None:
    read_end, _ = pipe
    readiness = FuseReadiness()
    waiting = asyncio.ensure_future(readiness.wait_readable(read_end))
    await steps(2)
    readiness.notify_closing(read_end)
    with pytest.raises(pyfuse3.asyncio.ClosedResourceError):
        await waiting


@pytest.mark.asyncio
async def test_install_puts_it_where_pyfuse3_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfuse3.asyncio, "wait_readable", pyfuse3.asyncio.wait_readable)
    monkeypatch.setattr(pyfuse3.asyncio, "notify_closing", pyfuse3.asyncio.notify_closing)
    readiness = install()
    assert readiness is not None  # the suite runs on uvloop, as the mount does
    assert pyfuse3.asyncio.wait_readable == readiness.wait_readable
    assert pyfuse3.asyncio.notify_closing == readiness.notify_closing
