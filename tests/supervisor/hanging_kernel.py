"""``kernelfarm`` whose kernels hang, or go slowly, where a test asks.

Run as ``python hanging_kernel.py serve ...``: the supervisor is the real one, and starts its
kernels through this script, which gives them these faults before running the real kernel:

- ``kernel.stats`` answers which thread served it (``{"tid", "main"}``), and with
  ``hang=True`` that thread then deadlocks on a lock it already holds (outside any of the
  kernel's own locks), as a thread that takes a lock twice does.  The rest of the kernel
  goes on: in locked mode its other threads serve, and the main thread answers the
  heartbeat.  With ``fsyncs=N`` it first appends and ``fsync``s a byte N times in the data
  dir: one request that holds its loop with real work (a slow disk, a big flush).
- ``$STUCK_ACQUIRE`` (a kernel id): that kernel's ``kernel.acquire`` never ends, while its
  loop serves on (a bug, not a load).
- ``$STUCK_SET_TABLE`` (a kernel id): that kernel's ``kernel.set_table`` never ends,
  while its loop serves on.
- ``$SLOW_RELEASE`` (seconds): ``kernel.release`` of some slots takes that long, in waits
  of 10 ms with the loop held, as flushing and closing many volumes does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from typing import Any


def deadlock() -> None:
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # never returns


def stats(self: Any, hang: bool = False, fsyncs: int = 0) -> dict[str, Any]:
    if fsyncs:
        with open(os.path.join(self.data_dir, "busy"), "ab") as file:
            for _ in range(fsyncs):
                file.write(b"x")
                file.flush()
                os.fsync(file.fileno())
    if hang:
        asyncio.get_running_loop().call_soon(deadlock)  # after this reply is written
    return {"tid": threading.get_native_id(),
            "main": threading.current_thread() is threading.main_thread()}


ENTRY = (os.path.abspath(__file__),)
"""What a test gives ``start_farm(entry=...)`` to run its farm through this script."""

STUCK_ACQUIRE = "STUCK_ACQUIRE"
STUCK_SET_TABLE = "STUCK_SET_TABLE"
SLOW_RELEASE = "SLOW_RELEASE"


def run_kernel(argv: list[str]) -> int:
    from kernelfarm.kernel import process
    from kernelfarm.kernel.kernel import Kernel

    acquire_sliced, release, set_table = Kernel.acquire_sliced, Kernel.release, Kernel.set_table

    async def stuck_acquire(self: Kernel, slots: list[int], *args: Any) -> int:
        if str(self.kernel_id) == os.environ.get(STUCK_ACQUIRE):
            await asyncio.Event().wait()
        return await acquire_sliced(self, slots, *args)

    async def stuck_set_table(self: Kernel, *args: Any) -> dict[str, Any]:
        if str(self.kernel_id) == os.environ.get(STUCK_SET_TABLE):
            await asyncio.Event().wait()
        return set_table(self, *args)

    def slow_release(self: Kernel, slots: list[int]) -> int:
        if slots:
            end = time.monotonic() + float(os.environ.get(SLOW_RELEASE, "0"))
            while time.monotonic() < end:
                time.sleep(0.01)
        return release(self, slots)

    Kernel.stats = stats  # type: ignore[method-assign]  # the faults, in this process only
    Kernel.acquire_sliced = stuck_acquire  # type: ignore[assignment, method-assign]  # same
    Kernel.release = slow_release  # type: ignore[method-assign]  # same
    Kernel.set_table = stuck_set_table  # type: ignore[assignment, method-assign]  # same
    return process.main(argv)


_Popen: Any = subprocess.Popen


def through_this_script(args: Any, *rest: Any, **kwargs: Any) -> Any:
    """The supervisor's Popen: kernels (``-m kernelfarm.kernel``) run this script."""
    if list(args[1:3]) == ["-m", "kernelfarm.kernel"]:
        args = [args[0], __file__, "kernel", *args[3:]]
    return _Popen(args, *rest, **kwargs)


if __name__ == "__main__":
    if sys.argv[1] == "kernel":
        sys.exit(run_kernel(sys.argv[2:]))
    from kernelfarm.cli import main

    subprocess.Popen = through_this_script  # type: ignore[assignment, misc]
    sys.exit(main())
