"""``kernelfarm mount`` against the FUSE floor: a plain pyfuse3 passthrough of a local dir.

Both file systems are mounted at once and every workload runs on one, then at once on the
other (which goes first alternates by round), side by side in one run (the machine is
noisy; back to back, both meet the same load and the same state of the host's memory),
``--repeat`` times, best of each kept:

- seq-write: 256 MiB written in 1 MiB ``write`` calls, then ``close`` (MB/s; on the
  mount, close returns once the data is on the farm);
- seq-read: the same file read back in 1 MiB calls after a fresh ``open`` (MB/s);
- small-files: 10,000 files of 100 bytes created (open, write, close), then all
  ``stat``-ed (files/s over both phases);
- cp-a: ``cp -a`` of a source tree (this project's package and tests) into the file
  system (seconds per copy; lower is better).  One copy lasts about 0.1-0.3 s, too
  short for a steady figure on a shared machine, so each round makes ``--copies`` of
  them on each side, interleaved copy by copy (which side goes first alternates), and
  the round's figure is the mean per copy: not the fastest copy, and both sides meet
  the same minutes.

Each round also records the CPU seconds each side spent (``cpu`` in the JSON, printed per
round): the file-system process (the mount or the passthrough), the farm (its supervisor
and kernels; none for the passthrough) and the program (this script and its ``cp``), and
the load average.  The same code's rounds differ 2-4x on this shared VM; the CPU figures
say whether a slow round did more work (first touches of fresh memory, which the host
zeroes) or waited for a core.  Beside the share of the best rounds the table gives the
share of the median rounds and how many times the passthrough's CPU the mount and farm
spent (medians over the rounds), both steadier than a best round.

The farm runs 2 kernels with ``[fs] max_file_bytes`` raised to fit the 256 MiB file,
``snapshot_journal_bytes`` raised past the run's writes, and the ``fsync`` policy given
(default ``never``: the passthrough does not fsync either, so both stop at the page
cache).  Results: ``results/mount_bench.json`` (the best round of each, and every round
under ``rounds``), ``.md`` and ``.png``.

    python benchmarks/mount_bench.py [--size-mib 256] [--files 10000] [--copies 5]
                                     [--repeat 2] [--fsync never|batch|always] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.table import Table

from kernelfarm.bench.cpu import CpuMeter
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import file_farm
from kernelfarm.mount.mtab import is_mounted

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
MIB = 1024 * 1024
GOAL = 0.5


# -- the two file systems ---------------------------------------------------------------


def wait_mounted(proc: subprocess.Popen[bytes], path: Path, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while not is_mounted(path):
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"{path} was not mounted (exit status {proc.poll()})")
        time.sleep(0.05)


@contextlib.contextmanager
def mounted(command: list[str], path: Path, log: Path) -> Iterator[int]:
    """Serve ``path`` by ``command`` (run in the foreground) for the block; its pid."""
    path.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_mounted(proc, path)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if is_mounted(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


# -- workloads ----------------------------------------------------------------------------


def seq_write(root: Path, size: int) -> float:
    chunk = os.urandom(MIB)
    started = time.perf_counter()
    with open(root / "big", "wb", buffering=0) as f:
        for _ in range(size // MIB):
            f.write(chunk)
    return size / MIB / (time.perf_counter() - started)


def seq_read(root: Path, size: int) -> float:
    buf = bytearray(MIB)
    total = 0
    started = time.perf_counter()
    with open(root / "big", "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    elapsed = time.perf_counter() - started
    assert total == size, (total, size)
    return size / MIB / elapsed


def small_files(root: Path, count: int) -> float:
    d = root / "small"
    d.mkdir()
    payload = b"x" * 100
    started = time.perf_counter()
    for i in range(count):
        with open(d / f"f{i}", "wb", buffering=0) as f:
            f.write(payload)
    for i in range(count):
        os.stat(d / f"f{i}")
    return count / (time.perf_counter() - started)


def cp_tree(root: Path, source: Path, copy: int = 0) -> float:
    started = time.perf_counter()
    subprocess.run(["cp", "-a", str(source), str(root / f"tree{copy}")], check=True)
    return time.perf_counter() - started


def clean(root: Path) -> None:
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


WORKLOADS: list[tuple[str, str, bool]] = [
    ("seq-write", "MB/s", True), ("seq-read", "MB/s", True),
    ("small-files", "files/s", True), ("cp-a", "s", False)]
"""(name, unit, higher is better)."""


@dataclass(frozen=True)
class System:
    """One file system under test: where to run the workloads, and whose CPU to count."""

    root: Path
    server_pid: int
    """The mount or passthrough process."""
    farm_pid: int | None = None
    """The farm's supervisor (its kernels counted with it); ``None``: no farm."""


def program_cpu() -> float:
    """CPU seconds of this script and its finished children (``cp``) so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measured(step: Callable[[Path], float], system: System
             ) -> tuple[float, dict[str, float]]:
    """``step``'s figure on ``system``, and the CPU seconds each side spent in it."""
    meters = {"fs": CpuMeter([system.server_pid], include_descendants=False)}
    if system.farm_pid is not None:
        meters["farm"] = CpuMeter([system.farm_pid])
    for meter in meters.values():
        meter.start()
    program = program_cpu()
    value = step(system.root)
    cpu = {"program": program_cpu() - program}
    cpu.update((side, meter.stop()) for side, meter in meters.items())
    cpu = {side: round(seconds, 3) for side, seconds in cpu.items()}
    cpu["load"] = round(os.getloadavg()[0], 2)
    return value, cpu


def run_all(systems: dict[str, System], args: argparse.Namespace, source: Path,
            console: Console, every: dict[str, dict[str, list[float]]],
            costs: dict[str, dict[str, list[dict[str, float]]]],
            each_copy: dict[str, list[list[float]]]) -> dict[str, dict[str, float]]:
    """The best round of each workload on each system; ``every`` gets all rounds,
    ``costs`` each round's CPU seconds by side, and ``each_copy`` cp -a's copies of each
    round by system."""
    size = args.size_mib * MIB
    best: dict[str, dict[str, float]] = {name: {} for name, _, _ in WORKLOADS}
    higher = {name: up for name, _, up in WORKLOADS}

    def keep(workload: str, system: str, value: float, cpu: dict[str, float]) -> None:
        every.setdefault(workload, {}).setdefault(system, []).append(round(value, 3))
        costs.setdefault(workload, {}).setdefault(system, []).append(cpu)
        old = best[workload].get(system)
        if old is None or (value > old if higher[workload] else value < old):
            best[workload][system] = value

    # (workload, step on a root and a copy number, copies per round and side)
    steps: list[tuple[str, Callable[..., float], int]] = [
        ("seq-write", lambda r, copy: seq_write(r, size), 1),
        ("seq-read", lambda r, copy: seq_read(r, size), 1),
        ("small-files", lambda r, copy: small_files(r, args.files), 1),
        ("cp-a", lambda r, copy: cp_tree(r, source, copy), args.copies)]
    for round_ in range(args.repeat):
        order = list(systems.items())
        if round_ % 2:
            order.reverse()
        for workload, step, copies in steps:
            values: dict[str, list[float]] = {name: [] for name in systems}
            spent: dict[str, dict[str, float]] = {name: {} for name in systems}
            for copy in range(copies):  # interleaved: the first side alternates by copy
                for name, system in (order if copy % 2 == 0 else order[::-1]):
                    value, cpu = measured(functools.partial(step, copy=copy), system)
                    values[name].append(value)
                    for side, seconds in cpu.items():
                        total = spent[name].get(side, 0.0)
                        spent[name][side] = seconds if side == "load" else total + seconds
            for name, _ in order:
                value = statistics.fmean(values[name])
                cpu = {side: round(seconds, 3) for side, seconds in spent[name].items()}
                shown = "  ".join(f"{side} {seconds:.2f}" for side, seconds in cpu.items())
                each = "" if copies == 1 else \
                    "   copies: " + " ".join(f"{v:.3f}" for v in values[name])
                console.print(f"round {round_ + 1} {name:<12} {workload:<12} {value:10.3f}"
                              f"   cpu s: {shown}{each}", soft_wrap=True)
                keep(workload, name, value, cpu)
                if copies > 1:
                    each_copy.setdefault(name, []).append([round(v, 3) for v in values[name]])
        for system in systems.values():
            clean(system.root)
    return best


def server_cpu(cpu: dict[str, float]) -> float:
    """CPU seconds of the file system's side of a round: the mount and the farm, or the
    passthrough (not the program, which runs the same on both)."""
    return cpu["fs"] + cpu.get("farm", 0.0)


def ratio(workload: str, values: dict[str, float]) -> float:
    up = {name: u for name, _, u in WORKLOADS}[workload]
    mount, floor = values["mount"], values["passthrough"]
    return mount / floor if up else floor / mount


def report(best: dict[str, dict[str, float]], every: dict[str, dict[str, list[float]]],
           costs: dict[str, dict[str, list[dict[str, float]]]],
           each_copy: dict[str, list[list[float]]],
           meta: dict[str, Any], host: dict[str, Any], out: Path, console: Console) -> None:
    rows = []
    for workload, unit, up in WORKLOADS:
        values = best[workload]
        medians = {system: statistics.median(found) for system, found in every[workload].items()}
        spent = {system: statistics.median(server_cpu(cpu) for cpu in found)
                 for system, found in costs[workload].items()}
        rows.append({"workload": workload, "unit": unit, "higher_is_better": up,
                     "mount": round(values["mount"], 3),
                     "passthrough": round(values["passthrough"], 3),
                     "mount_share_of_passthrough": round(ratio(workload, values), 3),
                     "median_share": round(ratio(workload, medians), 3),
                     "server_cpu_x_passthrough": round(
                         spent["mount"] / max(spent["passthrough"], 0.001), 2)})
    write_raw(out, "mount_bench", {**meta, "results": rows, "rounds": every, "cpu": costs,
                                       "cp_a_copies": each_copy},
              host=host)
    lines = ["| workload | kernelfarm mount | pyfuse3 passthrough | mount / passthrough "
             "| of the medians | server CPU x passthrough |",
             "|---|---:|---:|---:|---:|---:|"]
    table = Table(title="kernelfarm mount vs the FUSE floor")
    for column in ("workload", "mount", "passthrough", "share", "median share", "CPU x"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for row in rows:
        share = f"{row['mount_share_of_passthrough']:.2f}"
        digits = 2 if row["unit"] == "s" else 1
        cells = [f"{row['workload']} ({row['unit']})", f"{row['mount']:,.{digits}f}",
                 f"{row['passthrough']:,.{digits}f}", share, f"{row['median_share']:.2f}",
                 f"{row['server_cpu_x_passthrough']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
        table.add_row(*cells)
    (out / "mount_bench.md").write_text("\n".join(lines) + "\n")
    console.print(table)
    plot(rows, out / "mount_bench.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [row["workload"] for row in rows]
    shares = [row["mount_share_of_passthrough"] for row in rows]
    ax.bar(names, shares, color="tab:blue")
    ax.axhline(1.0, color="grey", linewidth=1, label="passthrough (FUSE floor)")
    ax.axhline(GOAL, color="tab:red", linestyle="--", linewidth=1, label="goal: half")
    for x, share in enumerate(shares):
        ax.text(x, share, f"{share:.2f}", ha="center", va="bottom")
    ax.set_ylabel("mount / passthrough (higher is better)")
    ax.set_title("kernelfarm mount against a pyfuse3 passthrough, one run")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--copies", type=int, default=5,
                        help="cp -a copies per round and side (the round's figure: their mean)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--fsync", choices=("never", "batch", "always"), default="never")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    console = Console()
    host = machine()
    meta = {"size_mib": args.size_mib, "files": args.files, "cp_copies": args.copies,
            "repeat": args.repeat, "farm": {"kernels": 2, "fsync": args.fsync}}
    with tempfile.TemporaryDirectory(prefix="mount-bench-") as tmp:
        scratch = Path(tmp)
        source = scratch / "source"
        for part in ("kernelfarm", "tests"):
            shutil.copytree(HERE.parent / part, source / part,
                            ignore=shutil.ignore_patterns("__pycache__"))
        meta["source_tree_files"] = sum(len(files) for _, _, files in os.walk(source))
        local = scratch / "local"
        local.mkdir()
        farm_root, pt_root = scratch / "farm-mnt", scratch / "pt-mnt"
        with file_farm(scratch, args.fsync, args.size_mib * MIB, kernels=2) as served, \
                mounted([sys.executable, "-m", "kernelfarm", "mount", "--foreground",
                         "--control", "{}:{}".format(*served.control),
                         "--token-file", str(served.data_dir / "admin.token"),
                         str(farm_root)], farm_root, scratch / "mount.log") as mount_pid, \
                mounted([sys.executable, str(HERE / "passthrough_fs.py"), str(local),
                         str(pt_root)], pt_root, scratch / "passthrough.log") as pt_pid:
            (farm_root / "bench").mkdir()
            every: dict[str, dict[str, list[float]]] = {}
            costs: dict[str, dict[str, list[dict[str, float]]]] = {}
            each_copy: dict[str, list[list[float]]] = {}
            best = run_all({"mount": System(farm_root / "bench", mount_pid, served.pid),
                            "passthrough": System(pt_root, pt_pid)},
                           args, source, console, every, costs, each_copy)
    report(best, every, costs, each_copy, meta, host, args.out, console)


if __name__ == "__main__":
    main()
