"""Server CPU seconds over a benchmark window, for CPU-per-operation figures.

Throughput alone hides cost: two designs serving the same ops/s on an idle machine can
differ twofold in the CPU they burn.  The meter snapshots user+system time of a set of
processes (and, when asked, of their live descendants: a supervisor's kernels, a locked
server's helpers) when the window opens and when it closes.  A process that appears in
the window counts from zero; one that exits in the window loses its share, so the meter
reports how many vanished rather than pretend.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class CpuMeter:
    """Measures user+system CPU seconds of ``pids`` between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Iterable[int], *, include_descendants: bool = True) -> None:
        self._pids = tuple(pids)
        self._include_descendants = include_descendants
        self._start: dict[int, float] | None = None
        self.seconds = 0.0
        self.vanished = 0

    def _processes(self) -> dict[int, psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for pid in self._pids:
            try:
                process = psutil.Process(pid)
                found[pid] = process
                if self._include_descendants:
                    for child in process.children(recursive=True):
                        found[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        return found

    def _snapshot(self) -> dict[int, float]:
        snapshot: dict[int, float] = {}
        for pid, process in self._processes().items():
            try:
                snapshot[pid] = _cpu_seconds(process)
            except psutil.NoSuchProcess:
                continue
        return snapshot

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> float:
        """Close the window; returns (and keeps in ``seconds``) the CPU seconds used in it."""
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        end = self._snapshot()
        self.seconds = sum(used - self._start.get(pid, 0.0) for pid, used in end.items())
        self.vanished = sum(1 for pid in self._start if pid not in end)
        self._start = None
        return self.seconds
