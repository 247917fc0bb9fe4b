"""Real processes for the SOCKS tests: ``kernelfarm socks`` and ``python -m http.server``.

Both print where they listen once they serve; the harness waits for that line with a
deadline and stops (and reaps) them when the block ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from farmctl import Farm
from kernelfarm.supervisor import launch

DEADLINE = 30.0


def read_line(proc: subprocess.Popen[bytes], what: str, timeout: float = DEADLINE) -> str:
    """The first line ``proc`` writes on stdout, within ``timeout``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{what} said nothing for {timeout} s")
        readable, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
        if readable:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"{what} exited with {proc.wait(5)} before serving")
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode()


@contextlib.contextmanager
def socks_proxy(farm: Farm, log_path: Path) -> Iterator[tuple[str, int]]:
    """``kernelfarm socks --listen 127.0.0.1:0`` for ``farm``; yields its address."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernelfarm", "socks", "--listen", "127.0.0.1:0",
             "--control", farm.control_str],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    try:
        ready = json.loads(read_line(proc, "kernelfarm socks"))
        yield ready["listen"][0], ready["listen"][1]
    finally:
        launch.end_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[int]:
    """``python -m http.server`` on 127.0.0.1, serving ``directory``; yields its port."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
         "--directory", str(directory), "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        line = read_line(proc, "http.server")
        match = re.search(r"port (\d+)", line)
        assert match, line
        yield int(match.group(1))
    finally:
        launch.end_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return digest.hexdigest()
