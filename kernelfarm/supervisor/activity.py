"""Busy or hung: what the host says one thread of a kernel is doing.

A kernel that stays silent past a deadline (a ping's ``heartbeat_timeout``, a boot's
``boot_timeout``) may be hung or may be working: both are wall time, and what a kernel can
do in that time depends on what it waits for.  The supervisor decides from the host's view
of ONE thread (``/proc/PID/task/TID``): the kernel's main thread, which answers the
heartbeat, or a locked kernel's serving thread whose loop has not turned (see
:mod:`kernelfarm.kernel.loopwatch`).  A process-wide view would let one working thread
vouch for a hung one beside it.  Only a thread that waits may be vouched for, by one it
may be waiting for: a thread in the middle of a step (:func:`stepping_threads`) that works.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

STARVED_SHARE = 0.5
"""A runnable thread that got less than this share of a core since the last look is
waiting for the CPU, not hung."""

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Activity(NamedTuple):
    """What tells a busy thread from a hung one.

    - A thread held by a long turn of real work (a batch of volume creations, a few
      ``fsync``s each) keeps coming back from its blocking calls (``returns``, its
      voluntary context switches), or waits on the disk right now (creating volumes at
      load 9, a kernel went half a second without a return, in one ``fsync``; a SIGKILL
      would wait for the disk too).
    - A thread on a crowded core is runnable but gets little of it (``cpu_s`` grows by
      less than :data:`STARVED_SHARE` of the time): at load 15, kernels took 14 s to boot
      and missed pings for 5 s; killing one only adds a boot to the crowd.

    A stopped thread, one asleep in a call that does not return (a lock that is never
    released), or one spinning in Python with most of its core shows none of these, and
    is hung.  (One spinning on a core that others crowd is spared until they leave it
    more than half.)
    """

    at: float
    returns: int
    on_disk: bool
    runnable: bool
    cpu_s: float

    def working_since(self, before: Activity) -> bool:
        if self.on_disk or self.returns != before.returns:
            return True
        return self.runnable and self.cpu_s - before.cpu_s < STARVED_SHARE * (self.at - before.at)

    def describe(self, before: Activity) -> str:
        """Why :meth:`working_since` holds, for the log."""
        if self.on_disk:
            return "waiting on the disk"
        if self.returns != before.returns:
            return f"{self.returns - before.returns} returns from waits"
        return (f"waiting for the CPU: {self.cpu_s - before.cpu_s:.2f} s of it in "
                f"{self.at - before.at:.1f} s")


def thread_activity(pid: int, tid: int) -> Activity | None:
    """Thread ``tid`` of process ``pid`` as the host sees it; ``None`` if it is gone."""
    task = f"/proc/{pid}/task/{tid}"
    try:
        with open(f"{task}/stat", "rb") as file:
            stat = file.read()
        with open(f"{task}/status", "rb") as file:
            status = file.read()
    except OSError:
        return None
    # After the command name, which may hold spaces and parentheses: state is the first
    # field, utime and stime the 12th and 13th.
    fields = stat[stat.rindex(b")") + 2:].split()
    state = fields[0]
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    returns = 0
    for line in status.splitlines():
        if line.startswith(b"voluntary_ctxt_switches:"):
            returns = int(line.split()[1])
            break
    if state == b"Z" or state == b"X":
        return None
    return Activity(time.monotonic(), returns, state == b"D", state == b"R", cpu_s)


def stepping_threads(pid: int) -> dict[int, Activity]:
    """The threads of process ``pid`` but its main one that are in the middle of a step
    now, with their activity: all but those asleep in their loop's wait for events
    (``epoll``, as ``/proc/PID/task/TID/wchan`` says; where it says nothing, a thread
    counts as stepping).  Only such a thread can hold a lock another waits for: a locked
    kernel's handlers hold theirs within one step of their loop (:mod:`kernelfarm.kernel.
    locks`)."""
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    stepping: dict[int, Activity] = {}
    for tid in tids:
        if tid == pid:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan", "rb") as file:
                wchan = file.read()
        except OSError:
            continue  # gone
        if b"epoll" in wchan or b"ep_poll" in wchan:
            continue
        activity = thread_activity(pid, tid)
        if activity is not None:
            stepping[tid] = activity
    return stepping

