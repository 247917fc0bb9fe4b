"""Start, command and stop the power-cut file system (:mod:`powercut_fs`) from a test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from farmctl import gone, wait_until

HERE = Path(__file__).resolve().parent


def require_fuse() -> None:
    """Skip without FUSE on a developer machine; under CI a missing FUSE is a failure."""
    missing = []
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        missing.append("pyfuse3")
    if missing:
        why = f"the power-cut tests need {' and '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(why + " (CI must run them: see kf's provisioning)")
        pytest.skip(why)


class PowerCut:
    """One mounted power-cut file system: ``mount`` is where the farm keeps its data."""

    def __init__(self, root: Path) -> None:
        self.backing = root / "backing"
        self.graveyard = root / "graveyard"
        self.mount = root / "mnt"
        self.control = root / "control.sock"
        self.log_path = root / "powercut.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for path in (self.backing, self.graveyard, self.mount):
            path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "powercut_fs.py"), str(self.backing),
                 str(self.graveyard), str(self.mount), str(self.control)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_until(lambda: self._ready(), timeout=20, what="the power-cut fs to mount")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"powercut fs exited: {self.log_path.read_text()}")
        return os.path.ismount(self.mount) and self.control.exists()

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.connect(str(self.control))
            sock.sendall(line.encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        text = reply.decode().strip()
        if text.startswith("error"):
            raise AssertionError(f"powercut {line!r}: {text}")
        return text

    def cut(self) -> None:
        """Drop everything not durable (call after the writers are dead)."""
        self.command("cut")

    def power_cut(self, pids: list[int]) -> None:
        """The power goes (every call fails from now), every process in ``pids`` is
        SIGKILLed and reaped, then what was not durable is dropped."""
        self.command("freeze")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            wait_until(lambda: gone(pid), timeout=20, what=f"pid {pid} to die")
        self.cut()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.path.ismount(self.mount):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], check=False)


@contextlib.contextmanager
def powercut_fs(root: Path) -> Iterator[PowerCut]:
    require_fuse()
    fs = PowerCut(root)
    fs.start()
    try:
        yield fs
    finally:
        fs.stop()
