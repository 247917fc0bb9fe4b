"""The benchmark runner: planning, derived figures, reports, and real end-to-end runs.

The end-to-end tests start real servers (a one-kernel farm, the echo floor, in-process
workers) for a fraction of a second each: they check that every piece is wired and that
the figures are sane, never how fast anything is.
"""

from __future__ import annotations

import argparse
import json
import errno
import math
import time
import tomllib
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernelfarm import config as configuration
from kernelfarm.bench import report, systems
from kernelfarm.bench.inprocess import InProcessPlan, _Driver, run_inprocess
from kernelfarm.bench.runner import BenchOptions, Cell, default_workers, derive, plan
from kernelfarm.cli import bench_cmd
from kernelfarm.errors import ConfigError, Refusal, posix
from kernelfarm.partition import NSLOTS
from kernelfarm.supervisor.supervisor import allowed_cores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(system: str, workers: int, workload: str, ops: float, **extra: Any) -> dict[str, Any]:
    return {"system": system, "workers": workers, "workload": workload, "ops_per_s": ops,
            "p50_us": 100.0, "p99_us": 900.0, "p999_us": 2000.0, "cpu_s_per_op": 5e-6,
            "errors": {}, "efficiency": None, "floor_share": None, **extra}


# -- planning ---------------------------------------------------------------------------------


def test_plan_skips_what_a_system_cannot_run_and_says_why() -> None:
    options = BenchOptions(workloads=("fs-stat", "net-echo"),
                           systems=("inprocess-procs", "unicpu-locks", "partitioned"),
                           workers=(1, 2))
    cells, skipped = plan(options)
    assert Cell("inprocess-procs", 2, "fs-stat") in cells
    assert Cell("partitioned", 2, "net-echo") in cells
    # unicpu-locks is one kernel, one thread: it exists at one worker only, silently.
    assert Cell("unicpu-locks", 1, "net-echo") in cells
    assert not any(c.system == "unicpu-locks" and c.workers == 2 for c in cells)
    assert not any(s["system"] == "unicpu-locks" for s in skipped)
    # In-process runs have no RPC peer for sockets: skipped, with the reason recorded.
    reasons = {(s["system"], s["workers"], s["workload"]): s["reason"] for s in skipped}
    assert set(reasons) == {("inprocess-procs", 1, "net-echo"), ("inprocess-procs", 2, "net-echo")}
    assert "net" in reasons[("inprocess-procs", 1, "net-echo")]


def test_options_refuse_unknown_names_and_bad_numbers() -> None:
    with pytest.raises(ValueError, match="fs-nope"):
        BenchOptions(workloads=("fs-nope",))
    with pytest.raises(ValueError, match="redis"):
        BenchOptions(systems=("redis",))
    with pytest.raises(ValueError, match="fsync"):
        BenchOptions(fsync="sometimes")
    with pytest.raises(ValueError, match="worker"):
        BenchOptions(workers=(0,))


def test_default_workers_go_to_the_core_count_and_twice_it() -> None:
    assert default_workers(2) == (1, 2, 4)
    assert default_workers(4) == (1, 2, 3, 4, 8)
    assert default_workers(2, quick=True) == (1, 2)
    assert default_workers(1, quick=True) == (1,)


def test_serve_flags_per_system() -> None:
    assert systems.serve_args("partitioned", 3) == ["--kernels", "3"]
    assert systems.serve_args("locked-global", 2) == [
        "--mode", "locked", "--threads", "2", "--locking", "global"]
    assert systems.serve_args("locked-fine", 4)[-1] == "fine"
    assert systems.serve_args("unicpu-locks", 1) == [
        "--mode", "locked", "--threads", "1", "--locking", "fine"]
    with pytest.raises(ValueError):
        systems.serve_args("echo", 1)
    farm = configuration.build(tomllib.loads(systems.config_text("batch")))
    assert (farm.auth.required, farm.fs.fsync) == (False, "batch")
    # --workers 16 on 2 cores: serve refuses more than supervisor.max_kernels (four per
    # core by default); the bench's farms run what it asks for.
    assert farm.supervisor.max_kernels == NSLOTS


def test_balanced_tenants_give_every_server_the_same_share() -> None:
    addresses = [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    target = systems.Target(call=lambda *a: None,
                            owner_of=lambda t: addresses[sum(map(ord, t)) % 3],
                            addresses=addresses, server_pids=[])
    tenants = systems.balanced_tenants(target, 5)
    assert len(set(tenants)) == 15
    owners = target.owners(tenants)
    assert sorted(list(owners.values()).count(a) for a in addresses) == [5, 5, 5]


# -- derived figures and reports -----------------------------------------------------------


def test_efficiency_and_floor_share() -> None:
    rows = [row("partitioned", 1, "fs-stat", 100.0), row("partitioned", 2, "fs-stat", 150.0),
            row("echo", 1, "fs-stat", 400.0), row("echo", 2, "fs-stat", 600.0),
            row("locked-fine", 2, "fs-stat", 90.0)]
    derive(rows)
    by = {(r["system"], r["workers"]): r for r in rows}
    assert by["partitioned", 1]["efficiency"] == 1.0
    assert by["partitioned", 2]["efficiency"] == pytest.approx(0.75)
    assert by["partitioned", 2]["floor_share"] == pytest.approx(0.25)
    assert by["echo", 2]["floor_share"] == 1.0
    # No one-worker row of its own: no efficiency rather than a made-up one.
    assert by["locked-fine", 2]["efficiency"] is None
    assert by["locked-fine", 2]["floor_share"] == pytest.approx(0.15)


def test_report_tables_and_plots_from_canned_rows(tmp_path: Path) -> None:
    rows = [row("echo", 1, "fs-stat", 400_000.0), row("partitioned", 2, "fs-stat", 150_000.0),
            row("partitioned", 1, "fs-stat", 100_000.0, errors={"ENOENT": 3},
                client_cpu_s_per_op=1.25e-6),
            row("partitioned", 1, "net-echo", 50_000.0)]
    derive(rows)
    results = {"machine": {"cpu_model": "Test CPU", "cores": 2, "cores_allowed": 2},
               "options": {"duration_s": 1.0, "warmup_s": 0.5, "connections_per_worker": 4,
                           "depth": 16, "load_processes": 2, "tenants_per_worker": 8,
                           "fsync": "never"},
               "rows": rows,
               "skipped": [{"system": "inprocess-procs", "workers": 1,
                            "workload": "net-echo", "reason": "no peer"}]}
    paths = report.write_all(results, tmp_path)
    assert sorted(p.name for p in paths) == [
        "results.json", "results.md", "throughput-fs-stat.png", "throughput-net-echo.png"]
    assert json.loads((tmp_path / "results.json").read_text()) == results
    for name in ("throughput-fs-stat.png", "throughput-net-echo.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "results.md").read_text()
    assert "Test CPU" in md and 'fsync = "never"' in md
    fs_section = md.split("## fs-stat")[1].split("## net-echo")[0]
    table = [line for line in fs_section.splitlines() if line.startswith("| ")][1:]
    # Rows in reading order: partitioned before echo, one worker before two.
    assert [line.split(" | ")[0:2] for line in table] == [
        ["| partitioned", "1"], ["| partitioned", "2"], ["| echo", "1"]]
    assert "| 100,000 |" in table[0] and "ENOENT 3" in table[0] and "25%" in table[0]
    assert "| 5.00 | 1.25 |" in table[0]  # server, then client CPU per request
    assert "not run: inprocess-procs x1 — no peer" in md.split("## net-echo")[1]


def test_the_summary_compares_partitioned_with_the_better_locked_baseline() -> None:
    rows = [row("partitioned", 1, "fs-stat", 100e3, cpu_s_per_op=2e-6),
            row("partitioned", 2, "fs-stat", 150e3, cpu_s_per_op=3e-6,
                client_cpu_s_per_op=1e-6),
            row("locked-global", 2, "fs-stat", 50e3), row("locked-fine", 2, "fs-stat", 60e3),
            row("unicpu-locks", 1, "fs-stat", 90e3, cpu_s_per_op=2.5e-6),
            row("partitioned", 2, "net-echo", 80e3), row("echo", 2, "net-echo", 400e3)]
    lines = report.summary(rows)
    assert "partitioned ÷ best locked at 2" in lines[3]
    # 150k / max(50k, 60k); at any thread count the best is the same 60k
    assert "| fs-stat | - | 2.50 | 2.50 | 2.00 vs 2.50 |" in lines
    assert not any(line.startswith("| net-echo") for line in lines)  # nothing to compare
    # A locked kernel better at 1 thread than at 2 is the one to beat at any count; the
    # ceiling: 2 cores / (3 + 1 us per request) = 500k, over the best locked at 2 (60k).
    rows.append(row("locked-fine", 1, "fs-stat", 75e3))
    lines = report.summary(rows, cores=2)
    assert "ceiling at 2: 2 cores ÷ (server + client + peer µs/op)" in lines[3]
    assert "| fs-stat | 1.33 | 2.50 | 2.00 | 8.33 | 2.00 vs 2.50 |" in lines


def test_the_ceiling_counts_the_echo_peers_cpu() -> None:
    """A net workload's host echo peer shares the cores: 2 cores / (3 + 1 + 1 us per
    request) = 400k, over the best locked at 2 (50k)."""
    rows = [row("partitioned", 2, "net-echo", 150e3, cpu_s_per_op=3e-6,
                client_cpu_s_per_op=1e-6, peer_cpu_s_per_op=1e-6),
            row("locked-fine", 2, "net-echo", 50e3)]
    assert "| net-echo | 3.00 | 8.00 | - |" in report.summary(rows, cores=2)  # 10.00 without


def test_an_inprocess_worker_counts_raised_and_returned_errors_as_a_kernel_answers() -> None:
    """A handler may raise its error or return a Refusal (an expected miss): both are
    the error the kernel would have answered, never a success."""
    def missing(path: str) -> Refusal:
        return Refusal(errno.ENOENT, path)

    def broken(path: str) -> None:
        raise posix(errno.EACCES, path)

    driver = _Driver([[(missing, ["/a"])], [(broken, ["/b"])], [(len, ["ok"])]], lambda: None)
    driver.run(time.monotonic(), 0.0, 0.05)
    assert driver.ops > 0 and driver.ops % 3 == 0
    assert driver.errors == {"ENOENT": driver.ops // 3, "EACCES": driver.ops // 3}


# -- real runs --------------------------------------------------------------------------------


def test_inprocess_threads_share_one_locked_fs(tmp_path: Path) -> None:
    plan_ = InProcessPlan("fs-create", workers=2, threads=True, tenants_per_worker=2,
                          depth=4, fsync="never", scratch=tmp_path)
    result, cpu_s = run_inprocess(plan_, duration_s=0.3, warmup_s=0.1)
    assert result.ops > 0 and result.errors == {}
    assert result.histogram.count == result.ops
    assert cpu_s > 0
    # One process, one data dir: the threads shared a single FsSubsystem.
    assert [p.name for p in tmp_path.iterdir()] == ["worker-0"]


def test_kernelfarm_bench_end_to_end(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="kernelfarm")
    bench_cmd.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "out"
    args = parser.parse_args([
        "bench", "--workloads", "fs-stat", "--systems", "partitioned,echo,inprocess-procs",
        "--workers", "1", "--duration", "0.3", "--warmup", "0.1", "--out", str(out)])
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    assert args.handler(args) == 0

    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left, f"processes left behind: {left}"
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["cores"] >= 1 and results["machine"]["python"]
    assert results["options"]["fsync"] == "never"
    rows = {r["system"]: r for r in results["rows"]}
    assert set(rows) == {"partitioned", "echo", "inprocess-procs"}, results["skipped"]
    for r in rows.values():
        assert r["workers"] == 1 and r["workload"] == "fs-stat"
        assert r["ops_per_s"] > 100 and r["error_ops"] == 0
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"]
        assert 0 < r["cpu_s_per_op"] < 0.01 and math.isclose(r["efficiency"], 1.0)
        assert 0.2 < r["duration_s"] < 2
    assert rows["partitioned"]["fsync"] == "never" and rows["echo"]["fsync"] is None
    # One kernel: its load pinned off its core when there is another core.
    kernel_core, *others = allowed_cores()
    assert set(rows["partitioned"]["load_cores"]) <= set(others or [kernel_core])
    assert rows["echo"]["floor_share"] == 1.0
    assert 0 < rows["partitioned"]["floor_share"]
    for name in ("partitioned", "echo"):  # replies checked by bytes, with their own results
        assert rows[name]["checked_by_bytes"] > 0.5 and rows[name]["replies_per_read"] >= 1
        assert 0 < rows[name]["client_cpu_s_per_op"] < 0.01
    md = (out / "results.md").read_text()
    assert "## fs-stat" in md and "| partitioned | 1 |" in md and "| echo | 1 |" in md
    assert ("request path pure Python" in md) == (results["machine"]["accelerated"] == [])
    assert (out / "throughput-fs-stat.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_quick_defaults_and_refusals() -> None:
    parser = argparse.ArgumentParser(prog="kernelfarm")
    bench_cmd.register(parser.add_subparsers(dest="command", required=True))
    quick = bench_cmd.options_from(parser.parse_args(["bench", "--quick"]))
    assert quick.duration_s == bench_cmd.QUICK_DURATION_S and quick.fsync == "never"
    assert quick.workers == default_workers(quick=True)
    assert set(quick.systems) == set(systems.SYSTEMS) and len(quick.workloads) == 6
    chosen = bench_cmd.options_from(parser.parse_args(
        ["bench", "--workloads", "net-echo", "--workers", "2,1,2", "--fsync", "always"]))
    assert (chosen.workloads, chosen.workers, chosen.fsync) == (("net-echo",), (1, 2), "always")
    with pytest.raises(ConfigError, match="duration"):
        bench_cmd.options_from(parser.parse_args(["bench", "--duration", "0"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--systems", "partitioned,redis"])
