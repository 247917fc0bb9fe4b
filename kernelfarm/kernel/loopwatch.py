"""Which serving loops of a locked kernel have stopped turning, for the heartbeat.

The supervisor's heartbeat is answered by the kernel's main thread.  In locked mode other
threads serve clients too, each with its own loop (:class:`~kernelfarm.kernel.locked.
WorkerThreads`); one of them can hang (a lock that is never released, a call that never
returns) while the main thread answers every ping.  So each ping posts a probe to every
other loop, and the next ping reports the loops whose probe has not run yet, with how
long it has waited: ``[tid, seconds]``.  The supervisor then judges each such thread on its
own (:mod:`kernelfarm.supervisor.activity`): busy, or hung and the kernel replaced.

A partitioned kernel has one thread and no watch: its ping pays nothing for this.
"""

from __future__ import annotations

import asyncio
import time


class LoopWatch:
    """Probes the loops of a locked kernel's other serving threads, from the main one."""

    def __init__(self, loops: list[tuple[int, asyncio.AbstractEventLoop]]) -> None:
        """``loops``: ``(native thread id, loop)`` of each other serving thread, filled in
        by the threads as they start (the list is read at each ping, not copied)."""
        self.loops = loops
        self._posted: dict[int, float] = {}
        """Thread id -> when the probe still waiting on its loop was posted."""

    def stalled(self) -> list[list[float]]:
        """``[tid, seconds]`` for each loop whose probe has waited since an earlier call;
        a new probe to each loop that has none waiting."""
        now = time.monotonic()
        report: list[list[float]] = []
        for tid, loop in self.loops:
            posted = self._posted.get(tid)
            if posted is not None:
                report.append([tid, now - posted])
                continue
            self._posted[tid] = now
            try:
                loop.call_soon_threadsafe(self._posted.pop, tid, None)
            except RuntimeError:  # its loop has closed: the kernel is stopping
                self._posted.pop(tid, None)
        return report
