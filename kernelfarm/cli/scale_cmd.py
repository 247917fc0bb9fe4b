"""``kernelfarm scale N``: grow or shrink a running farm, moving as few slots as possible.

The scale call runs in a thread while the main thread prints the supervisor's progress
(kernels started, slots moved) as it changes.  Ctrl-C asks the supervisor to cancel: it
stops at its next consistent step, stops the kernels it started that hold no slot yet, and
the command prints where the farm ended up.  The supervisor refuses a size above
``supervisor.max_kernels`` at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from kernelfarm.cli.common import add_client_options, client_token, control_address
from kernelfarm.client import Client
from kernelfarm.rpc.blocking import BlockingConnection

POLL_S = 0.25
STATUS_TIMEOUT_S = 30.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("scale", help="grow or shrink the farm live (Ctrl-C cancels)")
    parser.add_argument("kernels", type=int, help="the number of kernels wanted")
    add_client_options(parser)
    parser.set_defaults(handler=run)


def describe(progress: dict[str, Any] | None) -> str | None:
    """One progress line from ``cluster.status()["migration"]``."""
    if not progress:
        return None
    head = f"scaling {progress['from']} -> {progress['to']} kernels: "
    phase = progress.get("phase", "moving slots")
    if phase == "starting kernels":
        return head + (f"started {progress['kernels_started']}/"
                       f"{progress['kernels_to_start']} kernels")
    if phase == "stopping kernels":
        return head + "stopping the kernels no longer needed"
    return head + f"{progress['slots_moved']}/{progress['slots_total']} slots moved"


def run(args: argparse.Namespace) -> int:
    addr = control_address(args)
    token = client_token(args)
    outcome: dict[str, Any] = {}

    def scale() -> None:
        try:
            with Client(addr, token=token) as client:
                outcome["result"] = client.scale(args.kernels)
        except BaseException as exc:  # handed to the main thread, which reports it
            outcome["error"] = exc

    worker = threading.Thread(target=scale, name="scale", daemon=True)
    interrupted = threading.Event()
    # Ctrl-C only sets a flag: a KeyboardInterrupt in the middle of a status call or of
    # Thread.join() would leave either half-done.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    watcher = BlockingConnection(*addr)
    try:
        if token is not None:
            watcher.call("auth.hello", token, timeout=STATUS_TIMEOUT_S)
        worker.start()
        last = None
        cancelled = False
        while worker.is_alive():
            worker.join(POLL_S)
            if not worker.is_alive():
                break
            if interrupted.is_set() and not cancelled:
                print("kernelfarm: cancelling; the farm stops at its next consistent step",
                      file=sys.stderr, flush=True)
                watcher.call("cluster.scale_cancel")
                cancelled = True
                continue
            status = watcher.call("cluster.status", timeout=STATUS_TIMEOUT_S)
            line = describe(status["migration"])
            if line is not None and line != last:
                print(line, flush=True)
                last = line
    finally:
        watcher.close()
        signal.signal(signal.SIGINT, previous)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    print(f"{result['from']} -> {result['to']} kernels: {result['moved']} slots moved in "
          f"{result['seconds']:.2f} s (epoch {result['epoch']})"
          + (", cancelled" if result.get("cancelled") else ""))
    return 0
