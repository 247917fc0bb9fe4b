"""Write-behind alone (:mod:`kernelfarm.mount.writeback`), with a recording farm: what is
held until ``close`` and in which order it leaves."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import pytest

from kernelfarm.mount.writeback import InflightBudget, WriteBehind


class Recorder:
    """Each call the farm gets, with the loop turn it was sent in."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.turn = 0

    async def tick(self) -> None:
        """Count loop turns while the test runs."""
        while True:
            await asyncio.sleep(0)
            self.turn += 1

    def call(self, what: str) -> Callable[[], Awaitable[object]]:
        async def send() -> None:
            self.sent.append((self.turn, what))
            await asyncio.sleep(0)
        return send

    async def pwrite(self, offset: int, data: bytes | bytearray) -> int:
        await self.call(f"pwrite {offset} {bytes(data)!r}")()
        return len(data)


@pytest.mark.asyncio
async def test_changes_wait_for_close_and_leave_with_the_data_in_program_order() -> None:
    farm = Recorder()
    ticking = asyncio.ensure_future(farm.tick())
    try:
        behind = WriteBehind(farm.pwrite, InflightBudget(1 << 20), 1 << 20, hold_s=60)
        behind.lead(farm.call("create"))
        await behind.write(0, b"old")
        behind.then(farm.call("utime"), ordered=True)   # futimens: after "old"
        await behind.write(0, b"new")                     # the same bytes again
        behind.then(farm.call("chmod"), ordered=False)
        for _ in range(10):
            await asyncio.sleep(0)
        assert farm.sent == [] and not behind.idle        # held until close
        assert behind.end() == 3
        await behind.drain()
        order = [what for _, what in farm.sent]
        assert order == ["create", "pwrite 0 b'old'", "utime", "chmod", "pwrite 0 b'new'"]
        # All but the rewrite, which waits for the first write's answer, leave in one turn.
        assert len({turn for turn, what in farm.sent if what != "pwrite 0 b'new'"}) == 1
    finally:
        ticking.cancel()


@pytest.mark.asyncio
async def test_what_is_held_leaves_on_its_own_after_hold_s() -> None:
    farm = Recorder()
    behind = WriteBehind(farm.pwrite, InflightBudget(1 << 20), 1 << 20, hold_s=0.01)
    behind.then(farm.call("chmod"), ordered=False)
    async with asyncio.timeout(10):
        while not farm.sent:
            await asyncio.sleep(0.005)
    assert [what for _, what in farm.sent] == ["chmod"]
    await behind.drain()


@pytest.mark.asyncio
async def test_a_small_files_close_returns_right_after_the_answers() -> None:
    """A small file's create and write leave together at close, and the close returns
    three loop turns after they were sent (the farm here answers a turn after): each
    step of the loop on that path is latency a program waits for per file (it was
    four, with ``asyncio.wait``)."""
    farm = Recorder()
    ticking = asyncio.ensure_future(farm.tick())
    try:
        behind = WriteBehind(farm.pwrite, InflightBudget(1 << 20), 1 << 20, hold_s=60)
        behind.lead(farm.call("create"))
        await behind.write(0, b"x" * 100)
        await asyncio.sleep(0)
        start = farm.turn
        await behind.drain()
        assert farm.turn - start <= 3
        assert [what for _, what in farm.sent] == ["create", "pwrite 0 " + repr(b"x" * 100)]
    finally:
        ticking.cancel()


@pytest.mark.asyncio
async def test_the_inflight_budget_bounds_the_bytes_and_wakes_in_order() -> None:
    budget = InflightBudget(10)
    await budget.take(6)
    second = asyncio.ensure_future(budget.take(6))
    third = asyncio.ensure_future(budget.take(3))
    await asyncio.sleep(0)
    assert not second.done() and not third.done()  # 3 more would fit: it waits its turn
    budget.give(6)
    await asyncio.sleep(0)
    assert second.done() and third.done() and budget.used == 9
    gone = asyncio.ensure_future(budget.take(5))
    await asyncio.sleep(0)
    gone.cancel()  # the writer went away while waiting: takes nothing
    with pytest.raises(asyncio.CancelledError):
        await gone
    budget.give(6)
    assert budget.used == 3
    await budget.take(7)  # as big as the room left: at once
    assert budget.used == 10


@pytest.mark.asyncio
async def test_a_drain_in_the_step_a_write_was_answered_returns() -> None:
    """A write answered in this step of the loop is still listed until the next one:
    a drain begun now (``release``, ``getattr``... woken by the same reply) must not
    wait for it over and over without letting the loop run (it spun: a hung mount)."""
    answer = asyncio.Event()

    async def pwrite(offset: int, data: bytes | bytearray) -> int:
        await answer.wait()
        return len(data)

    behind = WriteBehind(pwrite, InflightBudget(1 << 20), 4, hold_s=60)
    await behind.write(0, b"abcd")  # a whole chunk: on its way
    await asyncio.sleep(0)
    answer.set()  # the write's task ends in the next step, then this drain runs
    async with asyncio.timeout(10):
        await asyncio.ensure_future(behind.drain())
    assert behind.idle
