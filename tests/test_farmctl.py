"""The test harness's own promises: reaping orphans never steals a status its owner waits
for (in session 6 it reaped ruff's and mypy's shells, and a lint error passed)."""

from __future__ import annotations

import subprocess
import sys

import psutil
from farmctl import become_subreaper, reap_orphans, wait_until


def exited(pid: int) -> bool:
    """``pid`` is a zombie (exited, not reaped) or gone."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_reaping_orphans_leaves_our_own_children_to_their_waiters() -> None:
    become_subreaper()
    own = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    # An orphan as a killed supervisor leaves them: a process in a group its parent
    # leads, re-parented to us when that parent exits.  It waits for its stdin to close.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; "
         "print(subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()']).pid)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, process_group=0)
    assert parent.stdout is not None and parent.stdin is not None
    with parent.stdout:
        orphan = int(parent.stdout.readline())
    assert parent.wait(timeout=30) == 0
    assert psutil.Process(orphan).ppid() == psutil.Process().pid  # re-parented to us
    parent.stdin.close()  # the orphan's stdin: it exits
    wait_until(lambda: exited(own.pid) and exited(orphan), what="both to exit")

    reap_orphans()

    assert own.wait(timeout=30) == 3  # not stolen: a stolen status reads as 0
    assert not psutil.pid_exists(orphan)  # reaped
