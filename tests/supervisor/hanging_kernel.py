"""``kernelfarm`` whose kernels can hang one of their threads on request.

Run as ``python hanging_kernel.py serve ...``: the supervisor is the real one, and starts its
kernels through this script, which gives them one fault before running the real kernel:
``kernel.stats`` answers which thread served it (``{"tid", "main"}``), and with
``hang=True`` that thread then deadlocks on a lock it already holds (outside any of the
kernel's own locks), as a thread that takes a lock twice does.  The rest of the kernel
goes on: in locked mode its other threads serve, and the main thread answers the
heartbeat.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any


def deadlock() -> None:
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # never returns


def stats(self: Any, hang: bool = False) -> dict[str, Any]:
    if hang:
        asyncio.get_running_loop().call_soon(deadlock)  # after this reply is written
    return {"tid": threading.get_native_id(),
            "main": threading.current_thread() is threading.main_thread()}


def run_kernel(argv: list[str]) -> int:
    from kernelfarm.kernel import process
    from kernelfarm.kernel.kernel import Kernel

    Kernel.stats = stats  # type: ignore[assignment, method-assign]  # the fault, here only
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
