"""Mounts as real processes for tests: ``kernelfarm mount --foreground`` against a farm.

A mount is waited for with a deadline stretched by the machine's load (the mount point
becomes a mount, or the process dies and its log says why), and always torn down:
SIGTERM (the mount unmounts itself), then a lazy ``fusermount3 -uz`` if a killed process
left the mount point behind.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from farmctl import DEADLINE, Farm, loaded, stop_process, wait_until
from kernelfarm.mount.mtab import is_mounted


@dataclass
class Mount:
    proc: subprocess.Popen[bytes]
    path: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def unmount_lazily(path: Path) -> None:
    """Detach a mount point whose process is gone or stuck, so nothing hangs after it."""
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def mount_command(farm: Farm, path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kernelfarm", "mount", str(path),
            "--control", farm.control_str, *args]


@contextlib.contextmanager
def mounted(farm: Farm, path: Path, *args: str, name: str = "mount") -> Iterator[Mount]:
    """Mount ``farm`` at ``path`` until the block ends; then unmount and reap."""
    path.mkdir(parents=True, exist_ok=True)
    log_path = path.parent / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(mount_command(farm, path, "--foreground", *args),
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: is_mounted(path) or proc.poll() is not None,
                   loaded(DEADLINE), f"{path} to be mounted")
        if proc.poll() is not None:
            raise AssertionError(f"mount exited {proc.returncode}: "
                                 f"{log_path.read_text(errors='replace')}")
        yield Mount(proc, path, log_path)
    finally:
        stop_process(proc, signal.SIGTERM)
        unmount_lazily(path)
