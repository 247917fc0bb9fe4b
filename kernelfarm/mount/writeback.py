"""Write-behind: a FUSE ``write`` is answered once its data is buffered, not once the
farm has it, so a program streaming a file keeps many ``fs.pwrite`` calls in flight.

Contiguous writes to one file are gathered into chunks of up to ``chunk_bytes`` and sent
as one ``fs.pwrite`` each; a chunk that overlaps one still in flight waits for it, so a
retried call (``TRYAGAIN`` during a slot move) can never land after a later write to the
same bytes.  The bytes in flight over the whole mount are bounded, which holds back the
writing program instead of growing memory.  ``drain`` sends what is buffered and waits
for everything: ``flush`` (close), ``fsync``, and every operation that must see the
file's data on the farm call it.  A failed chunk's error is reported once, by the next
``write``, ``flush`` or ``fsync`` of the file, as NFS reports a failed write-behind.

A file made by a create not waited for (:meth:`WriteBehind.lead`) gets its writes right
behind the ``fs.create``, on the same connection, so the kernel serves them in order; if a
retry let a write or change overtake the create (refused ``ENOENT``), it is sent again
once the create is in.  The create's failure is reported as a write's.

A change of the file's mode or mtime made while it is open goes the same way (``then``):
answered at once, sent behind the writes made before it, and waited for by ``drain``.
An mtime must land after those writes (each moves it): they are on the same connection,
so the kernel serves them first, unless a retry reordered them; if one was answered after
the ``utime``, it is sent again once every write is in.

The create and the changes are *held* until the file's next chunk leaves, its ``drain``,
or ``hold_s`` (then sent in the program's order): a small file's create, write and close,
or ``cp -a``'s write, ``futimens``, ``fchmod`` and close, leave in one system call and
come back in one reply batch, one wake-up of each side instead of two or three.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable

Send = Callable[[int, bytes | bytearray], Awaitable[object]]

HOLD_S = 0.005
"""How long a create not waited for may wait for the file's first write to go with it."""


class InflightBudget:
    """Bytes in flight over the whole mount, at most ``limit`` (one chunk always fits).

    Taking room that is there, and giving it back, are plain arithmetic (no lock, no
    step of the loop): a small file's write takes and gives once per close.  Writers
    that must wait are woken in the order they came."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    async def take(self, size: int) -> None:
        if not self._waiting and self._fits(size):
            self.used += size
            return
        room = asyncio.get_running_loop().create_future()
        self._waiting.append((size, room))
        try:
            await room  # counted by give() when it was set
        except BaseException:
            if room.done() and not room.cancelled():
                self.give(size)  # given room, but gone: pass it on
            else:
                self._waiting.remove((size, room))
            raise

    def force(self, size: int) -> None:
        """Count ``size`` bytes already held in memory, without waiting for room."""
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        while self._waiting and self._fits(self._waiting[0][0]):
            wanted, room = self._waiting.popleft()
            self.used += wanted
            room.set_result(None)


class WriteBehind:
    """The pending writes of one file (one inode of the mount)."""

    def __init__(self, send: Send, budget: InflightBudget, chunk_bytes: int,
                 hold_s: float = HOLD_S) -> None:
        self._send = send
        self._budget = budget
        self._chunk = chunk_bytes
        self._offset = 0
        self._buffer = bytearray()
        self._inflight: list[tuple[int, int, asyncio.Task[None]]] = []
        self._unanswered: set[int] = set()
        self._tickets = 0
        self._calls: list[asyncio.Task[Any]] = []   # the create, changes sent by ``then``
        self._ordered: asyncio.Task[None] | None = None  # the last ordered one
        self._lead: asyncio.Task[bool] | None = None  # the create, until answered
        self._held: Callable[[], Awaitable[object]] | None = None  # the create, not sent
        self._changes: list[tuple[Callable[[], Awaitable[object]], bool,
                                  tuple[int, bytearray] | None]] = []  # held ``then``s
        self._hold_s = hold_s
        self._hold_timer: asyncio.TimerHandle | None = None
        self._error: Exception | None = None

    @property
    def idle(self) -> bool:
        return not self._buffer and not self._inflight and not self._calls \
            and self._held is None and not self._changes

    def end(self) -> int:
        """One past the last byte written but perhaps not on the farm yet (0 if none)."""
        ends = [stop for _, stop, _ in self._inflight]
        for _, _, sealed in self._changes:
            if sealed is not None:
                ends.append(sealed[0] + len(sealed[1]))
        if self._buffer:
            ends.append(self._offset + len(self._buffer))
        return max(ends, default=0)

    async def write(self, offset: int, data: bytes) -> None:
        self._raise_error()
        if self._buffer and offset == self._offset + len(self._buffer) \
                and len(self._buffer) + len(data) <= self._chunk:
            self._buffer += data
        elif len(data) >= self._chunk:  # a whole chunk (the kernel's 1 MiB writes): as is
            await self._send_buffer()
            await self._put(offset, data)
            return
        else:
            await self._send_buffer()
            self._offset, self._buffer = offset, bytearray(data)
        if len(self._buffer) >= self._chunk:
            await self._send_buffer()

    def lead(self, create: Callable[[], Awaitable[object]]) -> None:
        """Send ``create`` ahead of every write and change of the file, with the first of
        them (at the latest after ``hold_s``), without waiting for it; ``drain`` waits
        for it and reports its failure."""
        self._held = create
        self._hold()

    def _hold(self) -> None:
        if self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(
                self._hold_s, self._release)

    def _release(self) -> None:
        """Put what is held on its way, in the program's order: the create, then each
        change behind the writes made before it.  Each task sends its call in its first
        step, so in the order the tasks are made here, all in one system call."""
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        create, self._held = self._held, None
        if create is not None:
            lead = self._lead = asyncio.ensure_future(self._leading(create))
            self._track(lead)
        changes, self._changes = self._changes, []
        for change, ordered, sealed in changes:
            if sealed is not None:
                self._budget.force(len(sealed[1]))
                self._launch(*sealed)
            task = asyncio.ensure_future(self._follow(
                change, ordered, self._ordered if ordered else None,
                frozenset(self._unanswered)))
            self._track(task)
            if ordered:
                self._ordered = task

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._calls.append(task)
        task.add_done_callback(self._calls.remove)

    async def _leading(self, create: Callable[[], Awaitable[object]]) -> bool:
        """Whether the create succeeded (its error is kept for the program)."""
        try:
            await create()
            return True
        except Exception as exc:  # reported to the program by the next write/flush/fsync
            self._error = self._error or exc
            return False
        finally:
            self._lead = None

    async def _behind_lead(self, call: Callable[[], Awaitable[object]]) -> None:
        """``call``, sent again if it found no file while the create was unanswered."""
        lead = self._lead
        try:
            await call()
        except FileNotFoundError:
            if lead is None:
                raise
            if not await lead:
                raise  # the create failed: its error is the one reported
            await call()

    def then(self, change: Callable[[], Awaitable[object]], ordered: bool) -> None:
        """Send ``change`` behind the writes so far without waiting for it, with the
        file's next write or its drain (at the latest after ``hold_s``): ``cp -a``'s
        ``futimens`` and ``fchmod`` leave with the data at ``close``, in one system
        call.  ``ordered``: it must be served after the writes made before it (a
        ``utime``), and after the previous ordered one."""
        sealed = None
        if self._buffer:  # written before the change: sent ahead of it
            sealed = (self._offset, self._buffer)
            self._buffer = bytearray()
        self._changes.append((change, ordered, sealed))
        self._hold()

    async def _follow(self, change: Callable[[], Awaitable[object]], ordered: bool,
                      previous: asyncio.Task[None] | None, writes: frozenset[int]) -> None:
        """``writes``: the writes made before the change and not answered yet."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
            await self._behind_lead(change)
            if ordered and writes & self._unanswered:  # checked in the step of its answer
                await self._writes_in()
                await change()
        except Exception as exc:  # reported to the program by the next write/flush/fsync
            self._error = self._error or exc

    async def _writes_in(self) -> None:
        while self._inflight:
            await asyncio.wait([task for _, _, task in self._inflight])

    async def settle(self) -> None:
        """Send the buffer and wait until every write and change of this file was
        answered; a failed one's error stays for the next ``write``, ``flush`` or
        ``fsync``."""
        self._release()
        await self._send_buffer()
        # Each unfinished one awaited in turn (none raises: they keep their errors): the
        # last one's end wakes this task at once, where ``asyncio.wait`` took two more
        # steps of the loop.  Finished ones leave the lists a step after they finish.
        while unfinished := [task for _, _, task in self._inflight if not task.done()] \
                + [task for task in self._calls if not task.done()]:
            for task in unfinished:
                await task

    async def drain(self) -> None:
        """Send the buffer and wait until every write of this file reached the farm."""
        await self.settle()
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def _send_buffer(self) -> None:
        if self._buffer:
            data, self._buffer = self._buffer, bytearray()  # sent, never changed again
            await self._put(self._offset, data)

    async def _put(self, start: int, data: bytes | bytearray) -> None:
        """Put one chunk on its way (``start`` is its offset in the file), behind what
        is held."""
        self._release()
        await self._budget.take(len(data))
        self._launch(start, data)

    def _launch(self, start: int, data: bytes | bytearray) -> None:
        """Start sending a chunk whose bytes the budget counts already."""
        stop = start + len(data)
        before = [task for first, last, task in self._inflight if first < stop and start < last]
        self._tickets += 1
        self._unanswered.add(self._tickets)
        task = asyncio.ensure_future(self._ship(self._tickets, start, data, before))
        entry = (start, stop, task)
        self._inflight.append(entry)
        task.add_done_callback(lambda _: self._inflight.remove(entry))

    async def _ship(self, ticket: int, offset: int, data: bytes | bytearray,
                    before: list[asyncio.Task[None]]) -> None:
        try:
            if before:
                await asyncio.wait(before)
            await self._behind_lead(lambda: self._send(offset, data))
        except Exception as exc:  # reported to the program by the next write/flush/fsync
            self._error = self._error or exc
        finally:
            self._unanswered.discard(ticket)  # in the step that took the answer
            self._budget.give(len(data))
