"""Writing a run down: ``results.json`` (raw), ``results.md`` (tables), one PNG per workload.

``results.json`` is one object: ``machine`` (what it ran on), ``options`` (the run's
settings, fsync policy included), ``rows`` (one per system x workers x workload, the
figures described in :mod:`kernelfarm.bench.runner`) and ``skipped`` (cells not measured,
each with its reason).  The tables and plots are derived from those rows alone, so they
can be redrawn from a committed JSON file (:func:`write_all` on its contents).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kernelfarm.bench.systems import SYSTEMS
from kernelfarm.bench.workloads import WORKLOADS

LOCKED = ("locked-global", "locked-fine")
"""The locked baselines; partitioned is compared with the better of them."""
COLUMNS = ("system", "workers", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU µs/op",
           "client CPU µs/op", "efficiency", "of floor", "errors")


def write_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Write the JSON, the tables and the plots of ``results`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    md_path = out / "results.md"
    md_path.write_text(markdown(results))
    return [json_path, md_path, *plot(results["rows"], out)]


def ordered(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in reading order: workload, then system (as listed in SYSTEMS), then workers."""
    def key(row: dict[str, Any]) -> tuple[int, int, int]:
        return (_index(WORKLOADS, row["workload"]), _index(SYSTEMS, row["system"]),
                row["workers"])
    return sorted(rows, key=key)


def _index(names: Sequence[str], name: str) -> int:
    return names.index(name) if name in names else len(names)


def table_cells(row: dict[str, Any]) -> list[str]:
    """One row of a results table, formatted for people."""
    return [
        row["system"],
        str(row["workers"]),
        f"{row['ops_per_s']:,.0f}",
        f"{row['p50_us']:,.0f}",
        f"{row['p99_us']:,.0f}",
        f"{row['p999_us']:,.0f}",
        _micros(row.get("cpu_s_per_op")),
        _micros(row.get("client_cpu_s_per_op")),
        _percent(row.get("efficiency")),
        _percent(row.get("floor_share")),
        _errors(row),
    ]


def _micros(seconds: float | None) -> str:
    return f"{seconds * 1e6:.2f}" if seconds is not None else "-"


def _percent(value: float | None) -> str:
    return f"{value * 100:.0f}%" if value is not None else "-"


def _errors(row: dict[str, Any]) -> str:
    errors = row.get("errors") or {}
    if not errors:
        return "0"
    return ", ".join(f"{code} {n:,}" for code, n in sorted(errors.items()))


def markdown(results: dict[str, Any]) -> str:
    machine, options = results["machine"], results["options"]
    lines = [
        "# kernelfarm bench results",
        "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('cores_allowed')} cores allowed "
        f"of {machine.get('cores')}; Python {machine.get('python')}; kernelfarm "
        f"{machine.get('kernelfarm')}; {machine.get('date')}; load average at start "
        f"{_loadavg(machine.get('load_average_at_start'))}, at end "
        f"{_loadavg(machine.get('load_average_at_end'))}.",
        "",
        f"Window {options['duration_s']:g} s after {options['warmup_s']:g} s warm-up; "
        f"{options['connections_per_worker']} connections x {options['depth']} in flight "
        f"per worker from {options['load_processes']} load processes (each drives one "
        f"kernel's connections where it can, pinned to a core the servers leave, else "
        f"beside its kernel); {options['tenants_per_worker']} tenants per worker; fs fsync "
        f"= \"{options['fsync']}\"; request path "
        f"{_compiled(machine.get('accelerated'))}.",
        "",
        "Columns: throughput over the window; latency percentiles of every request in it "
        "(a pipelined request waits for those ahead of it); server CPU per request "
        "(supervisor + kernels, or the server processes); the load generator's CPU per "
        "request (it shares the machine's cores with the servers); efficiency = ops/s / (workers x "
        "ops/s of the same system at 1 worker); of floor = ops/s / the echo floor's at the "
        "same worker count. Compare rows of one run only.",
    ]
    rows = ordered(results["rows"])
    lines += summary(rows, machine.get("cores_allowed"))
    for workload in _present(WORKLOADS, [r["workload"] for r in rows]):
        lines += ["", f"## {workload}", "",
                  "| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join("---" if i < 1 else "---:" for i in range(len(COLUMNS))) + "|"]
        for row in rows:
            if row["workload"] == workload:
                lines.append("| " + " | ".join(table_cells(row)) + " |")
        notes = [s for s in results.get("skipped", []) if s["workload"] == workload]
        if notes:
            lines.append("")
            for note in notes:
                lines.append(f"- not run: {note['system']} x{note['workers']} — "
                             f"{note['reason']}")
    return "\n".join(lines) + "\n"


def summary(rows: Sequence[dict[str, Any]], cores: int | None = None) -> list[str]:
    """The run's questions, per workload: how partitioned compares with the better locked
    baseline at each worker count, and at the most workers with the best locked row at
    any thread count up to that (adding threads may lose); the ceiling the machine's
    ``cores`` put on that ratio; and what switching the locks on costs one kernel
    (``unicpu-locks`` vs ``partitioned`` at one worker, by CPU per request).  Those two
    rows are measured tens of seconds apart, and a shared machine drifts by more than the
    locks cost in that time: ``benchmarks/lock_cost.py`` measures the difference alone,
    windows interleaved.

    The ceiling: partitioned cannot serve more than ``cores / (server + client + peer CPU
    per request)`` when its kernels, the load generator and (net workloads) the host echo
    peer share the cores; divided by the best locked row at the most workers, it is the
    most the ratio can be on this machine whatever the kernels do, unless the kernel, the
    client or the peer gets cheaper."""
    by = {(r["system"], r["workers"], r["workload"]): r for r in rows}
    workers = sorted({r["workers"] for r in rows if r["system"] == "partitioned"})
    top = workers[-1] if workers else 0
    head = [f"partitioned ÷ best locked at {w}" for w in workers]
    if len(workers) > 1:
        head.append(f"at {top} ÷ best locked at any count ≤ {top}")
    if cores:
        head.append(f"ceiling at {top}: {cores} cores ÷ (server + client + peer µs/op)")
    head.append("CPU µs/op, 1 kernel without vs with locks (rows apart)")
    lines = ["", "## Summary", "", "| workload | " + " | ".join(head) + " |",
             "|---|" + "---:|" * len(head)]
    for workload in _present(WORKLOADS, [r["workload"] for r in rows]):
        cells = [_ratio(by.get(("partitioned", count, workload)),
                        _best_locked(by, workload, [count])) for count in workers]
        ours = by.get(("partitioned", top, workload))
        if len(workers) > 1:
            cells.append(_ratio(ours, _best_locked(by, workload, range(1, top + 1))))
        if cores:
            cells.append(_ceiling(ours, _best_locked(by, workload, [top]), cores))
        bare, with_locks = by.get(("partitioned", 1, workload)), \
            by.get(("unicpu-locks", 1, workload))
        if bare and with_locks and bare.get("cpu_s_per_op") and with_locks.get("cpu_s_per_op"):
            cells.append(f"{bare['cpu_s_per_op'] * 1e6:.2f} vs "
                         f"{with_locks['cpu_s_per_op'] * 1e6:.2f}")
        else:
            cells.append("-")
        if any(cell != "-" for cell in cells):
            lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    return lines


def _best_locked(by: dict[tuple[str, int, str], dict[str, Any]], workload: str,
                 counts: Iterable[int]) -> float:
    return max((by[key]["ops_per_s"] for key in
                ((system, count, workload) for system in LOCKED for count in counts)
                if key in by), default=0.0)


def _ratio(ours: dict[str, Any] | None, locked: float) -> str:
    return f"{ours['ops_per_s'] / locked:.2f}" if ours and locked > 0 else "-"


def _ceiling(ours: dict[str, Any] | None, locked: float, cores: int) -> str:
    server, client = (ours or {}).get("cpu_s_per_op"), (ours or {}).get("client_cpu_s_per_op")
    if not server or not client or locked <= 0:
        return "-"
    peer = (ours or {}).get("peer_cpu_s_per_op") or 0.0
    return f"{cores / (server + client + peer) / locked:.2f}"


def _compiled(modules: Any) -> str:
    return (f"compiled ({len(modules)} modules, KERNELFARM_ACCEL=1)" if modules
            else "pure Python")


def _loadavg(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values) if values else "?"


def _present(order: Sequence[str], names: Sequence[str]) -> list[str]:
    seen = set(names)
    return [name for name in order if name in seen] + sorted(seen - set(order))


def plot(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """``throughput-<workload>.png``: ops/s against workers, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    paths = []
    rows = ordered(rows)
    for workload in _present(WORKLOADS, [r["workload"] for r in rows]):
        mine = [r for r in rows if r["workload"] == workload]
        figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
        try:
            for system in _present(SYSTEMS, [r["system"] for r in mine]):
                points = [(r["workers"], r["ops_per_s"]) for r in mine if r["system"] == system]
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, marker="o", label=system, color=_color(system),
                          linestyle="--" if system == "echo" else "-")
            workers = sorted({r["workers"] for r in mine})
            axes.set_xscale("log", base=2)
            axes.set_xticks(workers, [str(w) for w in workers])
            axes.minorticks_off()
            axes.set_xlabel("workers (kernels / threads / processes)")
            axes.set_ylabel("ops/s")
            axes.set_ylim(bottom=0)
            axes.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
            axes.set_title(f"{workload}: throughput against workers")
            axes.grid(True, alpha=0.3)
            axes.legend(fontsize="small")
            figure.tight_layout()
            path = out / f"throughput-{workload}.png"
            figure.savefig(path)
        finally:
            plt.close(figure)
        paths.append(path)
    return paths


def _color(system: str) -> str:
    """The same colour for a system in every plot."""
    return f"C{_index(SYSTEMS, system) % 10}"
