"""Long work done a step at a time, so a kernel's one loop can answer between the steps.

Loading a big volume (a snapshot of two million inodes, a long journal) takes seconds.
Done in one go on a kernel's loop, it would leave the supervisor's pings unanswered
(the kernel is killed as hung) and every other slot of the kernel waiting.  So such work
is written as a generator that yields between small steps -- a few hundred records, or
one big file -- and returns its result (``Steps[T]``; ``yield from`` chains them):

- :func:`finish` runs it to the end at once, where there is no loop to serve (tests,
  tools, the locked baseline's threads);
- :func:`run_sliced` runs it on the loop in slices of about :data:`SLICE_S`, giving the
  loop a turn between slices, and reports progress every so often, which is how a kernel
  that is loading at boot tells the supervisor it is alive (no lock, no thread: the loop
  simply gets its turns back).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Generator, TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]
"""Work that yields between steps and returns a ``T``."""

SLICE_S = 0.02
"""How long one slice of stepped work may hold the loop (the goal is < ~50 ms stalls)."""
STEP_ITEMS = 256
"""Small records (inodes, journal records) read in one step: about a millisecond."""
STEP_BYTES = 1024 * 1024
"""A record at least this big is a step of its own."""


def finish(steps: Steps[T]) -> T:
    """Run stepped work to its end without yielding to anyone; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result


async def run_sliced(steps: Steps[T], report: Callable[[int], None] | None = None,
                     report_every: float = 1.0) -> T:
    """Run stepped work on the running loop in slices of ``SLICE_S``; its result.

    ``report(steps_done)`` is called at most every ``report_every`` seconds, and only
    after a step has completed since the last report: a report is proof of progress.
    """
    clock = time.monotonic
    done = 0
    slice_end = clock() + SLICE_S
    next_report = clock() + report_every
    try:
        while True:
            try:
                next(steps)
            except StopIteration as finished:
                result: T = finished.value
                return result
            done += 1
            now = clock()
            if now >= slice_end:
                if report is not None and now >= next_report:
                    report(done)
                    next_report = now + report_every
                await asyncio.sleep(0)
                slice_end = clock() + SLICE_S
    finally:
        # Cancelled between slices: the work's own clean-up (``finally``, ``except
        # BaseException``) runs now.  An interpreted generator would also run it when
        # dropped; a compiled one (kernelfarm.accel) only when closed.
        steps.close()
