"""``kernelfarm`` whose first kernel boots on crowded cores: it gets almost none of them.

Run as ``python crowded_boot.py SECONDS serve ...``.  When this supervisor starts its first
kernel, it starts a busy loop on every core for ``SECONDS`` too, and the kernel runs at
nice 19 (set in the child before it runs Python) and the loops at nice 0 where allowed
(a niced test run would leave the kernel eight times more): for that long the kernel gets
about 1.5 % of a core, far less than starting takes, although nothing is wrong with it.  The
supervisor keeps its share (the usual priority), and waits for the loops when it exits.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from typing import Any

from kernelfarm.cli import main

CROWDED_S = float(sys.argv.pop(1))
BUSY_LOOP = """\
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
try:  # the usual priority even when the tests run niced (nice -n 10: the kernel got 12 %)
    os.setpriority(os.PRIO_PROCESS, 0, 0)
except PermissionError:
    pass
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""
_Popen: Any = subprocess.Popen
crowd: list[Any] = []


def crowded(*args: Any, **kwargs: Any) -> Any:
    """The kernels' Popen (this process starts nothing else with it)."""
    if not crowd:
        crowd.extend(_Popen([sys.executable, "-c", BUSY_LOOP, str(core), str(CROWDED_S)])
                     for core in sorted(os.sched_getaffinity(0)))
        atexit.register(lambda: [loop.wait() for loop in crowd])
        return _Popen(*args, preexec_fn=lambda: os.nice(19), **kwargs)
    return _Popen(*args, **kwargs)


subprocess.Popen = crowded  # type: ignore[assignment, misc]  # the fault, in this process only
sys.exit(main())
