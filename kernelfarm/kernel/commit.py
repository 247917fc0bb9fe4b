"""Group commit: every write of one loop turn shares one flush, and no reply goes out
before the ``fdatasync`` it depends on has returned.

A subsystem that appended to its journal asks for a flush (:meth:`GroupCommit.request`);
from then on, replies are held (:meth:`GroupCommit.send`).  At the end of the turn
:meth:`GroupCommit.commit` runs each requested flush once: a flush writes what its
subsystem buffered and returns the descriptors that must be synced before the
turn's replies may go (one sync for all the turn's writes).  Where they are synced:

- inline (the default): the commit syncs them itself, then writes the held replies;
- behind (:meth:`GroupCommit.sync_behind`, a unicpu kernel): the commit sends them to
  a syncer child (:mod:`kernelfarm.kernel.syncer`) and the loop serves on; the turn's
  replies go out when the child answers for that group.  Every turn's group is sent as
  soon as it is written, behind those still syncing: the child reads a group's request
  only after it was sent, so after its write, and syncs it after reading it -- never
  with an ``fdatasync`` that was already running when the record was written.  Groups
  are answered in order.  Replies made while groups are syncing (reads too: they may
  show what is being made durable) wait for the last group sent before them -- but for
  a group no reply depends on (:class:`~kernelfarm.kernel.subsystem.Unheld`: the batch
  policy's timer makes journals durable whose replies all went out already), which
  holds nothing.

A flush or sync that fails is fatal (:func:`exit_unacknowledged`): after a failed fsync
the page cache may already have dropped the data, so the kernel exits without replying
and recovers from its journal on restart (PostgreSQL's answer to fsyncgate).  The unicpu
kernel, each thread of the locked baseline, the in-process benchmark and the test
harnesses all use this one class; only who schedules the commit, where it syncs and what
a failure does are theirs to say.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import deque
from time import perf_counter
from typing import Any, Callable, NoReturn, Sequence

from kernelfarm.boot import EXIT_FLUSH_FAILED
from kernelfarm.kernel.subsystem import Unheld
from kernelfarm.kernel.syncer import GONE, Syncer
from kernelfarm.rpc.protocol import Wire

log = logging.getLogger(__name__)

Flush = Callable[[], Sequence[int]]
"""Writes a subsystem's buffered changes; the descriptors to ``fdatasync`` before the
replies that depend on them go out (open until the commit returns to the loop), or, as
:class:`~kernelfarm.kernel.subsystem.Unheld`, descriptors to sync that no reply waits for."""


def write_all(flushes: list[Flush]) -> Sequence[int]:
    """Run a group commit's flushes (their writes); the descriptors they ask to sync
    (:class:`Unheld` if every flush that named some named them so)."""
    if len(flushes) == 1:
        return flushes[0]()
    fds: list[int] = []
    unheld = True
    for flush in flushes:
        named = flush()
        if named:
            fds.extend(named)
            unheld = unheld and type(named) is Unheld
    return Unheld(fds) if fds and unheld else fds


def run_flushes(flushes: list[Flush]) -> None:
    """Run a group commit's flushes and syncs inline; a failure raises (for code outside
    a kernel)."""
    for fd in write_all(flushes):
        os.fdatasync(fd)


def exit_unacknowledged(why: str, exc_info: bool = False) -> NoReturn:
    """Exit the kernel process at once: nothing the failed flush covers is acknowledged."""
    log.critical("flush failed; exiting without acknowledging the writes (%s)", why,
                 exc_info=exc_info)
    os._exit(EXIT_FLUSH_FAILED)


def flush_or_exit(flushes: list[Flush]) -> None:
    """Run a group commit's flushes and syncs; if one fails, exit before any reply."""
    try:
        run_flushes(flushes)
    except Exception as exc:
        exit_unacknowledged(str(exc), exc_info=True)


class GroupCommit:
    """The group commit of one event loop (one thread)."""

    __slots__ = ("_schedule", "_run", "_flushes", "_held", "_syncing", "_waited", "_syncer",
                 "pending", "holding", "count", "seconds", "group_replies")

    def __init__(self, schedule: Callable[[Callable[[], None]], object],
                 run: Callable[[list[Flush]], None] = flush_or_exit) -> None:
        """``schedule(commit)`` arranges for ``commit`` to run at the end of this loop turn
        (``loop.call_soon``); ``run(flushes)`` runs the flushes and syncs inline and
        handles a failure."""
        self._schedule = schedule
        self._run = run
        self._flushes: list[Flush] = []
        self._held: list[tuple[Any, Wire]] = []
        self._syncing: deque[list[tuple[Any, Wire]] | None] = deque()
        """Behind: the replies of each group the syncer has not answered, oldest first
        (``None`` for an unheld group)."""
        self._waited = 0
        """Groups in :attr:`_syncing` that replies wait for (not unheld)."""
        self._syncer: Syncer | None = None
        self.pending = False
        """True from the first request of a turn until its commit has written."""
        self.holding = False
        """True while replies are held: a commit pending or groups syncing."""
        self.count = 0
        """Commits run (each one flush per volume written in its turn)."""
        self.seconds = 0.0
        """Time the loop spent running their flushes (and, inline, their syncs)."""
        self.group_replies = 0
        """Replies released by commits (over ``count``: the mean group size)."""

    def sync_behind(self, syncer: Syncer, loop: Any) -> None:
        """Sync in ``syncer`` from now on, its answers read on ``loop``."""
        self._syncer = syncer
        syncer.watch(loop, self._synced)

    def request(self, flush: Flush | None = None) -> None:
        """Hold replies until ``flush`` (if given, once per turn) has written and its
        descriptors are synced."""
        if not self.pending:
            self.pending = True
            self.holding = True
            self._schedule(self.commit)
        if flush is not None and flush not in self._flushes:
            self._flushes.append(flush)

    def send(self, conn: Any, data: Wire) -> None:
        """Write ``data`` to ``conn`` now, or after the pending commit and syncs."""
        if self.holding:
            self._held.append((conn, data))
        else:
            conn.write(data)

    def commit(self) -> None:
        """Run the turn's flushes; send what they held back once their syncs are done."""
        if not self.pending:
            return  # done early (commit_now)
        flushes, self._flushes = self._flushes, []
        self.pending = False
        started = perf_counter()
        syncer = self._syncer
        if syncer is None:
            self._run(flushes)
            fds: Sequence[int] = ()
        else:
            # Written here, synced behind; a failure exits before any reply.  Not a
            # helper's frame: a turn of one change pays every frame of its commit.
            try:
                fds = write_all(flushes)
            except Exception as exc:
                exit_unacknowledged(str(exc), exc_info=True)
        self.count += 1
        self.seconds += perf_counter() - started
        self.group_replies += len(self._held)
        if fds and syncer is not None:
            if type(fds) is not Unheld:
                self._syncing.append(self._held)
                self._held = []
                self._waited += 1
                syncer.start(fds)
                return
            self._syncing.append(None)  # nothing waits for it
            syncer.start(fds)
        if not self._waited:
            self._release()
        # else: nothing of its own to wait for, but groups sent before are syncing: its
        # replies wait for the last of them (_synced)

    def _release(self) -> None:
        held, self._held = self._held, []
        self.holding = False
        for conn, data in held:
            conn.write(data)

    def _synced(self, error: int) -> None:
        """The oldest group is synced: its replies go out (or, if it failed, none ever)."""
        if error:
            why = "the syncer is gone" if error == GONE else \
                f"fdatasync: {os.strerror(error)} ({errno.errorcode.get(error, error)})"
            exit_unacknowledged(why)
        group = self._syncing.popleft()
        if group is not None:
            self._waited -= 1
            for conn, data in group:
                conn.write(data)
        if not self._waited and not self.pending and self.holding:
            self._release()  # replies made meanwhile, with no write after them

    def stats(self) -> dict[str, float]:
        """For ``kernel.stats``: commits, the loop's time in them, replies they held;
        with a syncer, its syncs, their wall time and the journals they synced."""
        syncer = self._syncer
        return {
            "group_commits": self.count, "group_commit_seconds": self.seconds,
            "group_commit_replies": self.group_replies,
            "syncs_behind": syncer.syncs if syncer else 0,
            "sync_behind_seconds": syncer.sync_seconds if syncer else 0.0,
            "sync_behind_fds": syncer.sync_fds if syncer else 0,
        }

    def close(self) -> None:
        """Finish every commit, then end the syncer (if any) and reap it."""
        self.commit_now()
        if self._syncer is not None:
            self._syncer.close()
            self._syncer = None

    def commit_now(self) -> None:
        """Finish every commit and sync early, before state leaves (a slot released, a
        stop): blocks until the replies they held are sent."""
        self.commit()
        if self._syncer is not None:
            self._syncer.wait()
