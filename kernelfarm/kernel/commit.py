"""Group commit: every write of one loop turn shares one flush, and no reply goes out
before the flush it depends on has run.

A subsystem that appended to its journal asks for a flush (:meth:`GroupCommit.request`);
from then until the end of the loop turn, replies are held (:meth:`GroupCommit.send`).
At the end of the turn :meth:`GroupCommit.commit` runs each requested flush once (one
fsync for all the turn's writes), then writes the held replies.

A flush that fails is fatal (:func:`flush_or_exit`): after a failed fsync the page cache
may already have dropped the data, so the kernel exits without replying and recovers from
its journal on restart (PostgreSQL's answer to fsyncgate).  The unicpu kernel, each
thread of the locked baseline, the in-process benchmark and the test harnesses all use
this one class; only who schedules the commit and what a failure does are theirs to say.
"""

from __future__ import annotations

import logging
import os
from time import perf_counter
from typing import Any, Callable

from kernelfarm.boot import EXIT_FLUSH_FAILED
from kernelfarm.rpc.protocol import Wire

log = logging.getLogger(__name__)

Flush = Callable[[], None]


def run_flushes(flushes: list[Flush]) -> None:
    """Run a group commit's flushes; a failure raises (for code outside a kernel)."""
    for flush in flushes:
        flush()


def flush_or_exit(flushes: list[Flush]) -> None:
    """Run a group commit's flushes; if one fails, exit before any reply is sent."""
    try:
        run_flushes(flushes)
    except Exception:
        log.critical("flush failed; exiting without acknowledging the writes", exc_info=True)
        os._exit(EXIT_FLUSH_FAILED)


class GroupCommit:
    """The group commit of one event loop (one thread)."""

    __slots__ = ("_schedule", "_run", "_flushes", "_held", "pending", "count", "seconds")

    def __init__(self, schedule: Callable[[Callable[[], None]], object],
                 run: Callable[[list[Flush]], None] = flush_or_exit) -> None:
        """``schedule(commit)`` arranges for ``commit`` to run at the end of this loop turn
        (``loop.call_soon``); ``run(flushes)`` runs the flushes and handles a failure."""
        self._schedule = schedule
        self._run = run
        self._flushes: list[Flush] = []
        self._held: list[tuple[Any, Wire]] = []
        self.pending = False
        """True from the first request of a turn until its commit: replies are held."""
        self.count = 0
        """Commits run (each one flush per volume written in its turn)."""
        self.seconds = 0.0
        """Time spent running their flushes."""

    def request(self, flush: Flush | None = None) -> None:
        """Hold this turn's replies until ``flush`` (if given, once per turn) has run."""
        if not self.pending:
            self.pending = True
            self._schedule(self.commit)
        if flush is not None and flush not in self._flushes:
            self._flushes.append(flush)

    def send(self, conn: Any, data: Wire) -> None:
        """Write ``data`` to ``conn`` now, or after the pending commit."""
        if self.pending:
            self._held.append((conn, data))
        else:
            conn.write(data)

    def commit(self) -> None:
        """Run the turn's flushes, then send what they held back."""
        flushes, self._flushes = self._flushes, []
        self.pending = False
        started = perf_counter()
        self._run(flushes)
        self.count += 1
        self.seconds += perf_counter() - started
        held, self._held = self._held, []
        for conn, data in held:
            conn.write(data)

    def commit_now(self) -> None:
        """Finish the turn's commit early, before state leaves (a slot released, a stop)."""
        if self.pending:
            self.commit()
