"""Waiting for ``/dev/fuse`` to have a request, with one lasting registration in the loop.

pyfuse3's asyncio mode waits for each request by registering the FUSE descriptor with
the event loop and removing it once the request is there (``add_reader``, then
``remove_reader``: two ``epoll_ctl`` system calls, a future and a callback per request;
in ``perf`` of the mount under the small-files loop, ``epoll_ctl`` alone was 4.8% of its
CPU).  pyfuse3 lets one task at a time wait (its read lock), so the descriptor can stay
registered while requests come.  Between two waits the loop may poll once with no task
waiting (the reader hands pyfuse3's lock to the next task, which takes it a step
later): a request that arrived meanwhile is then left for the next poll, and the
descriptor is removed only when it is found readable twice in a row with no task
waiting (so the loop never spins on it), and when the session closes.

:func:`install` puts :class:`FuseReadiness` in place of pyfuse3's ``wait_readable`` and
``notify_closing`` (the two functions of its asyncio layer that pyfuse3's session loop
calls for this; looked up at each call), after ``pyfuse3.asyncio.enable()``, on uvloop
only: uvloop runs a reader's callback inside its poll, so "readable" is that poll's
answer; asyncio's selector loop queues the callback behind the steps already due, one
of which may have taken the request meanwhile (a later waiter would then be woken for
nothing, and read a descriptor with nothing to read).
"""

from __future__ import annotations

import asyncio

import pyfuse3.asyncio
import uvloop


class FuseReadiness:
    """The FUSE descriptor's readiness, for one waiting task at a time."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None
        self._watched: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._unclaimed = False  # readable at the last poll, with no task waiting
        self.watches = 0  # times the descriptor was registered with the loop

    async def wait_readable(self, fd: int) -> None:
        """Return once ``fd`` has a request; ``ClosedResourceError`` if it is closing."""
        loop = asyncio.get_running_loop()
        if self._waiter is not None and not self._waiter.done():
            raise RuntimeError("one task at a time waits for the FUSE descriptor")
        waiter = self._waiter = loop.create_future()
        if self._watched is None:
            loop.add_reader(fd, self._readable)
            self.watches += 1
            self._watched = (loop, fd)
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _readable(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._unclaimed = False
            waiter.set_result(None)
        elif self._unclaimed:
            self.stop()  # nobody takes it: watched again by the next waiter
        else:
            self._unclaimed = True

    def notify_closing(self, fd: int) -> None:
        """The session is ending: the waiting task (if any) gets ``ClosedResourceError``."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(pyfuse3.asyncio.ClosedResourceError())
        self.stop()

    def stop(self) -> None:
        """Stop watching the descriptor (before it is closed)."""
        if self._watched is not None:
            loop, fd = self._watched
            self._watched = None
            self._unclaimed = False
            loop.remove_reader(fd)


def install() -> FuseReadiness | None:
    """Make pyfuse3's session loop wait through one :class:`FuseReadiness` (on uvloop,
    the mount's loop; ``None`` and pyfuse3's own wait kept on any other)."""
    if not isinstance(asyncio.get_running_loop(), uvloop.Loop):
        return None
    readiness = FuseReadiness()
    pyfuse3.asyncio.wait_readable = readiness.wait_readable
    pyfuse3.asyncio.notify_closing = readiness.notify_closing
    return readiness
