"""Run ``kernelfarm serve`` as a child process, as a user does, and wait until it serves.

The tests, the benchmarks and scripts all start farms this way: a real daemon on
127.0.0.1 with its control port chosen by the kernel (port 0), found from the one JSON line
the daemon prints on stdout when it serves.  Stopping is SIGTERM (the supervisor stops its
kernels), then SIGKILL if it hangs, and every kernel is waited for, so nothing is left
behind whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from kernelfarm.errors import KernelfarmError
from kernelfarm.rpc.blocking import readable

READY_TIMEOUT_S = 60.0
"""Booting a supervisor and its kernels on a loaded 2-core machine."""
STOP_TIMEOUT_S = 20.0
"""The supervisor gives each kernel its own shutdown_timeout (5 s) before SIGKILL."""


class LaunchError(KernelfarmError):
    """The daemon exited, or said nothing, before it served."""

    code = "ELAUNCH"


def spawn(args: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None,
          entry: Sequence[str] = ("-m", "kernelfarm"),
          process_group: int | None = None) -> subprocess.Popen[bytes]:
    """``python -m kernelfarm serve --control 127.0.0.1:0 ARGS``, its stderr to ``log_path``.

    ``entry`` is what Python runs instead of ``-m kernelfarm``: a test's script that
    starts the same command with one fault injected into the supervisor.
    ``process_group``: as :class:`subprocess.Popen`'s (``0``: a group of its own, which
    its kernels join).
    """
    command = [sys.executable, *entry, "serve", "--control", "127.0.0.1:0",
               "--metrics", "127.0.0.1:0", *args]
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL, process_group=process_group,
                                env=dict(env) if env is not None else None)


def wait_ready(proc: subprocess.Popen[bytes], log_path: Path,
               timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """The daemon's ready line (``{"event": "ready", "control": [host, port], ...}``)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _not_serving(f"said nothing for {timeout:g} s", log_path)
        if readable(proc.stdout, min(remaining, 0.5)):
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:  # stdout closed: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                raise _not_serving(f"exited with {proc.poll()}", log_path)
            buffer += chunk
    ready: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return ready


def _not_serving(why: str, log_path: Path) -> LaunchError:
    tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
    return LaunchError(f"kernelfarm serve {why} before serving:\n" + "\n".join(tail))


def kernels_of(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def end_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                timeout: float = STOP_TIMEOUT_S) -> int:
    """Signal a child, give it ``timeout`` seconds to exit, then SIGKILL it; reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
         timeout: float = STOP_TIMEOUT_S) -> int:
    """Stop the daemon with ``sig`` (SIGKILL after ``timeout``) and wait for its kernels."""
    kernels = kernels_of(proc)
    end_process(proc, sig, timeout)
    if proc.stdout is not None:
        proc.stdout.close()
    _, alive = psutil.wait_procs(kernels, timeout=timeout)
    for kernel in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            kernel.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return proc.returncode
