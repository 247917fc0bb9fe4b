"""Snapshots written by a forked child, so that the kernel's loop never waits for one.

A snapshot of a volume near its quota is a gigabyte of msgpack and an fsync: seconds in
which the kernel could answer nothing, longer than the supervisor's heartbeat.  Instead
the kernel switches the volume to a new journal (:meth:`.volume.Volume.begin_snapshot`),
forks, and goes on serving; the child writes the tree from its copy-on-write image of
memory -- the volume exactly as of the switch, as Redis's ``BGSAVE`` does -- fsyncs it
and exits.  The loop learns of the exit from a pidfd and installs the snapshot (a rename
and a directory fsync, on the loop); the superseded journals are deleted in slices of
the loop (:func:`.journal.removing`).

What still held the loop was measured with a 512 MiB volume (benchmarks/
snapshot_bench.py with loop-lag instrumentation): ``fork`` itself, 92 ms (it copies the
page tables of all the kernel's memory; kernels now run glibc's malloc on transparent
huge pages, which makes that about ten times cheaper, see
:mod:`kernelfarm.supervisor.handle`), and ``unlink`` of the old 512 MiB journal, 160 ms
(now cut down a few ms per slice).  With ``fsync = "never"`` the switch does no fsync on
the loop.  The child itself, pinned to the kernel's core by inheritance, took half of that
core from the kernel's reads: it now runs unpinned and niced.

The kernel stays one thread; the child is another process that shares nothing once
forked, holds no descriptor of the parent's (it closes them all, so a connection the
kernel closes really closes) and dies with its parent
(``PR_SET_PDEATHSIG``), so a snapshot of a dead kernel is never installed by anyone:
only the live kernel renames a written file into place.

A process with other threads (a locked-mode kernel) must not fork: a worker could be
half-way through changing the tree.  There, and without a loop to reap the child, the
snapshot is written inline, as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable

from kernelfarm import durable
from kernelfarm.fs import snapshot
from kernelfarm.fs.journal import removing
from kernelfarm.fs.volume import SNAPSHOT, Volume, journal_path
from kernelfarm.steps import run_sliced

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
SNAPSHOT_NICE = 10
"""A snapshot child's niceness: it gets about a tenth of a core a kernel also wants."""


@dataclass
class Job:
    pid: int
    pidfd: int
    generation: int
    tmp: str


Done = Callable[[Volume, "Exception | None"], None]


class Snapshotter:
    """At most ``limit`` snapshot children at a time (each may hold a copy of the pages
    the kernel changes while it writes)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None, done: Done,
                 limit: int = 1) -> None:
        self.loop = loop
        self.done = done
        self.limit = limit
        self.jobs: dict[Volume, Job] = {}
        self.removals: set[asyncio.Task[None]] = set()
        """Superseded journals being deleted, a slice of the loop at a time."""

    def can_fork(self) -> bool:
        return self.loop is not None and threading.active_count() == 1

    def busy(self, volume: Volume) -> bool:
        return volume in self.jobs

    def start(self, volume: Volume, durable_switch: bool) -> bool:
        """Begin a snapshot of ``volume`` in a child; False if the limit is reached.
        (``durable_switch``: see :meth:`.volume.Volume.begin_snapshot`.)"""
        assert self.loop is not None
        if len(self.jobs) >= self.limit:
            return False
        generation = volume.begin_snapshot(durable_switch)
        tmp = snapshot.temp_path(os.path.join(volume.directory, SNAPSHOT), generation)
        old_journal = journal_path(volume.directory, generation - 1)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: write, fsync, exit; never return into the kernel
            code = 1
            try:
                _become_snapshot_child(parent)
                durable.sync_file(old_journal)  # whole before the snapshot: see begin_snapshot
                snapshot.write_temp(tmp, volume.tree, generation)
                code = 0
            except BaseException as exc:
                os.write(2, f"snapshot writer of {volume.name!r}: {exc!r}\n".encode())
            finally:
                os._exit(code)
        pidfd = os.pidfd_open(pid)
        self.jobs[volume] = Job(pid, pidfd, generation, tmp)
        self.loop.add_reader(pidfd, self._reap, volume)
        return True

    def _reap(self, volume: Volume) -> None:
        job = self._end(volume)
        error: Exception | None = None
        try:
            _, status = os.waitpid(job.pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise OSError(f"the snapshot writer (pid {job.pid}) exited with {code}")
            superseded = volume.install_snapshot(job.generation, os.path.getsize(job.tmp))
        except (OSError, ChildProcessError) as exc:
            _remove(job.tmp)
            error = exc
        else:
            assert self.loop is not None  # only the loop reaps
            for path in superseded:
                task = self.loop.create_task(run_sliced(removing(path)))
                self.removals.add(task)
                task.add_done_callback(self._removed)
        self.done(volume, error)

    def _removed(self, task: asyncio.Task[None]) -> None:
        self.removals.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Left for the next load to delete (it is older than the snapshot).
            log.warning("cannot remove a superseded journal: %s", task.exception())

    def cancel(self, volume: Volume) -> None:
        """Stop the volume's snapshot (it is being dropped); its journals stay whole."""
        if volume not in self.jobs:
            return
        job = self._end(volume)
        try:
            os.kill(job.pid, signal.SIGKILL)
            os.waitpid(job.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        _remove(job.tmp)

    def close(self) -> None:
        for volume in list(self.jobs):
            self.cancel(volume)
        for task in list(self.removals):  # a part-cut journal is deleted at the next load
            task.cancel()

    def _end(self, volume: Volume) -> Job:
        job = self.jobs.pop(volume)
        assert self.loop is not None
        self.loop.remove_reader(job.pidfd)
        os.close(job.pidfd)
        return job


def _become_snapshot_child(parent: int) -> None:
    """Cut the child loose from the kernel: no signals into the kernel's wakeup fd, no
    inherited descriptors, death with the parent, no garbage collector touching (and so
    copying) every page of the tree."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    # Background work: off the kernel's core where another is free, and behind the
    # kernels where it is not (it inherited the kernel's pinning; sharing that core at
    # equal priority halved the kernel's reads while a snapshot was written).
    os.nice(SNAPSHOT_NICE)
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except OSError:  # a cpuset narrower than the host: stay where we are
        pass
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, already closed
    gc.disable()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # left for the next load to clear
        log.warning("cannot remove %s: %s", path, exc)
