"""The benchmark runner: every system x worker count x workload of one run, side by side.

Rows are only comparable when they come from the same run on the same machine (two
shared cores make absolute figures drift between runs), so one invocation measures all
the systems, one after another, with the same load generator, the same tenants per
worker and the same window.  Each (system, workers) pair is started once and runs every
workload in turn; a system that cannot start (or a cell that fails) is recorded with its
reason and the run goes on, so one broken configuration never hides the others.

A row's figures: throughput over the measured window, latency percentiles of every
request in it, server CPU seconds per request (psutil: supervisor and kernels for a farm,
the server processes otherwise), scaling efficiency against the same system and workload
at one worker, and throughput as a share of the echo floor at the same worker count.
"""

from __future__ import annotations

import contextlib
import argparse
import datetime
import functools
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import psutil

from kernelfarm.bench import layout, systems
from kernelfarm.bench.cpu import CpuMeter
from kernelfarm.bench.inprocess import InProcessPlan, run_inprocess
from kernelfarm.bench.loadgen import LoadResult, run_load
from kernelfarm.bench.echo import EchoProcess
from kernelfarm.bench.workloads import NEEDS_ECHO, WORKLOADS, prepare
from kernelfarm.errors import KernelfarmError
from kernelfarm.supervisor.supervisor import allowed_cores


@dataclass(frozen=True)
class BenchOptions:
    """What one run measures, and with which load."""

    workloads: tuple[str, ...] = WORKLOADS
    systems: tuple[str, ...] = systems.SYSTEMS
    workers: tuple[int, ...] = (1, 2, 4)
    duration_s: float = 3.0
    warmup_s: float = 0.5
    fsync: str = "never"
    connections_per_worker: int = 4
    depth: int = 16
    """Requests in flight per connection (and the batch of an in-process worker)."""
    tenants_per_worker: int = 8
    load_processes: int = 2

    def __post_init__(self) -> None:
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown workload(s) {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(WORKLOADS)}")
        unknown = set(self.systems) - set(systems.SYSTEMS)
        if unknown:
            raise ValueError(f"unknown system(s) {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(systems.SYSTEMS)}")
        if not self.workloads or not self.systems or not self.workers:
            raise ValueError("need at least one workload, one system and one worker count")
        if any(w < 1 or w > 64 for w in self.workers):
            raise ValueError("worker counts must be 1..64")
        if not 0 < self.duration_s <= 600 or not 0 <= self.warmup_s <= 60:
            raise ValueError("duration must be in (0, 600] s and warm-up in [0, 60] s")
        if self.fsync not in systems.FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(systems.FSYNC_POLICIES)}")
        if not 1 <= self.depth <= 256 or not 1 <= self.connections_per_worker <= 64:
            raise ValueError("depth must be 1..256 and connections per worker 1..64")


@dataclass(frozen=True)
class Cell:
    """One row to measure."""

    system: str
    workers: int
    workload: str

    def label(self) -> str:
        return f"{self.system} x{self.workers} {self.workload}"


@dataclass
class BenchResults:
    machine: dict[str, Any]
    options: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "options": self.options, "rows": self.rows,
                "skipped": self.skipped}


Progress = Callable[[Cell, str], None]
"""Called with a cell and ``"start"``, ``"done"`` or ``"skipped"``."""


def default_workers(cores: int | None = None, *, quick: bool = False) -> tuple[int, ...]:
    """1, 2, ... up to the core count, and twice it (oversubscribed); quick: 1 and cores."""
    cores = cores or len(psutil.Process().cpu_affinity() or [0])
    counts = [1, cores] if quick else list(range(1, cores + 1)) + [2 * cores]
    return tuple(sorted(set(counts)))


def plan(options: BenchOptions) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The cells to run, grouped by (system, workers), and the ones skipped with why."""
    cells: list[Cell] = []
    skipped: list[dict[str, Any]] = []
    for system in options.systems:
        for workers in sorted(options.workers):
            for workload in options.workloads:
                cell = Cell(system, workers, workload)
                reason = systems.skip_reason(system, workload, workers)
                if reason is None:
                    cells.append(cell)
                elif not (system in systems.ONE_WORKER and workers != 1):
                    skipped.append({**asdict(cell), "reason": reason})
    return cells, skipped


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import kernelfarm

    return {
        "cpu_model": _cpu_model(),
        "cores": psutil.cpu_count(logical=True),
        "cores_allowed": len(psutil.Process().cpu_affinity() or []),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "kernelfarm": kernelfarm.__version__,
        "uvloop": metadata.version("uvloop"),
        "msgpack": metadata.version("msgpack"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
        "accelerated": accelerated(),
    }


def accelerated() -> list[str]:
    """The compiled accelerator's modules the servers of this run load (``./kf`` with
    ``KERNELFARM_ACCEL=1`` puts them first on the path every process started here
    inherits), or none: the request path runs pure."""
    import importlib.util

    from kernelfarm import accel

    if os.environ.get("KERNELFARM_ACCEL") != "1":
        return []
    return [name for name in accel.MODULES
            if (spec := importlib.util.find_spec(name)) is not None and spec.origin
            and spec.origin.endswith(tuple(EXTENSION_SUFFIXES))]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was."""
    return [round(x, 2) for x in psutil.getloadavg()]


def write_raw(out: Path, benchmark: str, figures: Mapping[str, Any], *,
              host: Mapping[str, Any] | None = None, args: argparse.Namespace | None = None,
              internal: Iterable[str] = (), name: str | None = None,
              compact: bool = False) -> Path:
    """Write one benchmark's raw results to ``out/<name or benchmark>.json``; say where.

    Every script's file starts the same way, so a reader (or a plot redrawn later) finds
    what a figure was measured on without knowing the script: ``benchmark``; ``machine``
    (``host`` as :func:`machine` found it at the start of the run, or now, plus the load
    average at the end); ``options`` when ``args`` is given (the command line without
    ``--out`` and the ``internal`` ones); then the script's own ``figures``.  ``compact``
    leaves out the indentation, for files of many raw samples.
    """
    measured_on = dict(host if host is not None else machine())
    measured_on["load_average_at_end"] = load_average()
    raw: dict[str, Any] = {"benchmark": benchmark, "machine": measured_on}
    if args is not None:
        left_out = {"out", *internal}
        raw["options"] = {k: v for k, v in vars(args).items() if k not in left_out}
    raw.update(figures)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name or benchmark}.json"
    text = json.dumps(raw, separators=(",", ":")) if compact else json.dumps(raw, indent=2)
    path.write_text(text + "\n")
    print(f"raw results: {path}")
    return path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(options: BenchOptions, *, progress: Progress | None = None,
              scratch: Path | None = None) -> BenchResults:
    """Measure every cell of ``options``; see the module docstring."""
    cells, skipped = plan(options)
    results = BenchResults(machine(), asdict(options), skipped=skipped)
    notify = progress or (lambda cell, event: None)
    with contextlib.ExitStack() as stack:
        if scratch is None:
            scratch = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="kernelfarm-bench-")))
        peer = stack.enter_context(systems.byte_echo_if_needed(
            [c.workload for c in cells if c.system not in systems.INPROCESS]))
        for (system, workers), group in _groups(cells):
            where = scratch / f"{system}-{workers}"
            if system in systems.INPROCESS:
                for cell in group:
                    _measure_cell(cell, results, notify,
                                  functools.partial(_inprocess_row, cell, options, where))
                continue
            try:
                with systems.running_system(system, workers, where, options.fsync) as target:
                    for cell in group:
                        _measure_cell(cell, results, notify,
                                      functools.partial(_rpc_row, cell, options, target, peer))
            except (KernelfarmError, OSError) as exc:
                done = {(r["system"], r["workers"], r["workload"]) for r in results.rows}
                for cell in group:
                    if (cell.system, cell.workers, cell.workload) not in done and \
                            not _was_skipped(results, cell):
                        results.skipped.append({**asdict(cell), "reason": _reason(exc)})
                        notify(cell, "skipped")
    results.machine["load_average_at_end"] = load_average()
    derive(results.rows)
    return results


def _groups(cells: Sequence[Cell]) -> list[tuple[tuple[str, int], list[Cell]]]:
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.system, cell.workers), []).append(cell)
    return list(groups.items())


def _was_skipped(results: BenchResults, cell: Cell) -> bool:
    return any((s["system"], s["workers"], s["workload"]) ==
               (cell.system, cell.workers, cell.workload) for s in results.skipped)


def _reason(exc: BaseException) -> str:
    return f"failed: {type(exc).__name__}: {exc}"[:500]


def _measure_cell(cell: Cell, results: BenchResults, notify: Progress,
                  measure: Callable[[], dict[str, Any]]) -> None:
    """Run one cell; a failure is recorded against that cell and the run goes on."""
    notify(cell, "start")
    try:
        row = measure()
    except (KernelfarmError, OSError, ValueError) as exc:
        results.skipped.append({**asdict(cell), "reason": _reason(exc)})
        notify(cell, "skipped")
        return
    results.rows.append(row)
    notify(cell, "done")


def _rpc_row(cell: Cell, options: BenchOptions, target: systems.Target,
             peer: EchoProcess | None) -> dict[str, Any]:
    tenants_total = options.tenants_per_worker * cell.workers
    per_server = math.ceil(tenants_total / len(target.addresses))
    tenants = systems.balanced_tenants(target, per_server)
    connections = max(options.connections_per_worker * cell.workers, len(target.addresses))
    layouts = layout.spread(target.owners(tenants), connections, options.depth)
    prepared = prepare(cell.workload, target.call, layout.streams_needed(layouts),
                       echo_address=peer.address if peer is not None else None)
    # The host echo peer of a net workload shares the cores too: its CPU is metered
    # beside the servers' (the summary's ceiling counts it).
    uses_peer = peer is not None and cell.workload in NEEDS_ECHO
    peer_meter = CpuMeter([peer.pid] if peer is not None and uses_peer else [],
                          include_descendants=False)
    meter = CpuMeter(target.server_pids)

    def window_start() -> None:
        meter.start()
        peer_meter.start()

    def window_end() -> None:
        meter.stop()
        peer_meter.stop()

    plans = layout.plans(layouts, prepared, target.answer)
    cores = layout.load_cores([plan.address for plan in plans], target.cores,
                              options.load_processes, cell.workers, allowed_cores())
    try:
        result = run_load(plans, duration_s=options.duration_s,
                          warmup_s=options.warmup_s, processes=options.load_processes,
                          cores=cores, on_window_start=window_start, on_window_end=window_end)
    finally:
        prepared.cleanup(target.call)
    row = _row(cell, options, result, meter.seconds)
    row.update(connections=connections, depth=options.depth, tenants=len(tenants),
               load_cores=cores,
               client_cpu_s_per_op=result.client_cpu_s / max(result.ops, 1),
               peer_cpu_s_per_op=peer_meter.seconds / max(result.ops, 1) if uses_peer
               else None,
               replies_per_read=result.ops / max(result.reads, 1),
               checked_by_bytes=result.by_bytes / max(result.ops, 1),
               lost_connections=result.lost_connections,
               protocol_errors=result.protocol_errors)
    if cell.system == "echo":
        row["fsync"] = None  # the floor stores nothing
    return row


def _inprocess_row(cell: Cell, options: BenchOptions, scratch: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=_mkdir(scratch)) as where:
        plan_ = InProcessPlan(cell.workload, cell.workers,
                              threads=cell.system == "inprocess-threads",
                              tenants_per_worker=options.tenants_per_worker,
                              depth=options.depth, fsync=options.fsync, scratch=Path(where))
        result, cpu_s = run_inprocess(plan_, duration_s=options.duration_s,
                                      warmup_s=options.warmup_s)
    row = _row(cell, options, result, cpu_s)
    row.update(connections=0, depth=options.depth,
               tenants=options.tenants_per_worker * cell.workers)
    return row


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _row(cell: Cell, options: BenchOptions, result: LoadResult,
         server_cpu_s: float) -> dict[str, Any]:
    summary = result.histogram.summary_us()
    return {
        "system": cell.system,
        "workers": cell.workers,
        "workload": cell.workload,
        "ops_per_s": result.ops_per_s,
        "p50_us": summary["p50_us"],
        "p99_us": summary["p99_us"],
        "p999_us": summary["p999_us"],
        "max_us": summary["max_us"],
        "mean_us": summary["mean_us"],
        "cpu_s_per_op": server_cpu_s / result.ops if result.ops else None,
        "server_cpu_s": server_cpu_s,
        "ops": result.ops,
        "errors": dict(result.errors),
        "error_ops": sum(result.errors.values()),
        "duration_s": result.duration_s,
        "fsync": options.fsync,
        "efficiency": None,
        "floor_share": None,
    }


def derive(rows: list[dict[str, Any]]) -> None:
    """Fill ``efficiency`` (vs the same system at 1 worker) and ``floor_share`` (vs echo)."""
    by_key = {(r["system"], r["workers"], r["workload"]): r for r in rows}
    for row in rows:
        base = by_key.get((row["system"], 1, row["workload"]))
        if base is not None and base["ops_per_s"] > 0:
            row["efficiency"] = row["ops_per_s"] / (row["workers"] * base["ops_per_s"])
        floor = by_key.get(("echo", row["workers"], row["workload"]))
        if floor is not None and floor["ops_per_s"] > 0:
            row["floor_share"] = row["ops_per_s"] / floor["ops_per_s"]
