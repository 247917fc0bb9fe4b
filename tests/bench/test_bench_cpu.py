"""The CPU meter counts the CPU a process burns in the window, its descendants included."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kernelfarm.bench.cpu import CpuMeter

BURN_S = 0.3

# Burns BURN_S of its own CPU, says so, then idles until its stdin closes.
BURNER = (
    "import sys, time\n"
    f"while time.process_time() < {BURN_S}: pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def burner() -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as process:
        try:
            yield process
        finally:
            process.kill()


def wait_burnt(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    assert process.stdout.readline() == "burnt\n"


def test_the_cpu_of_a_busy_process_is_counted() -> None:
    with burner() as process:
        meter = CpuMeter([process.pid], include_descendants=False)
        meter.start()
        wait_burnt(process)
        seconds = meter.stop()
    # Start-up CPU before start() is not counted; the burn mostly is.
    assert BURN_S * 0.5 <= seconds <= BURN_S + 0.5
    assert meter.vanished == 0


def test_descendants_are_counted_only_when_asked() -> None:
    with burner() as process:
        with_children = CpuMeter([os.getpid()])
        alone = CpuMeter([os.getpid()], include_descendants=False)
        with_children.start()
        alone.start()
        wait_burnt(process)
        with_children.stop()
        alone.stop()
    assert with_children.seconds >= BURN_S * 0.5
    assert alone.seconds < with_children.seconds - BURN_S * 0.4


def test_stop_without_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before start"):
        CpuMeter([os.getpid()]).stop()
