"""Where a kernel's microseconds go: one kernel under load, sampled by py-spy, per workload.

Runs the workloads of :mod:`benchmarks.peers` (same farm, same pinning, same 50 x 16
shape) one at a time, samples the kernel process with ``py-spy record --format raw``
while the load runs, and splits the kernel's measured CPU per request over the Python
functions the samples were in (self time: time in C code called from a function counts
as that function's, e.g. a socket ``send`` inside ``FarmSocket.send``).  Samples include
time the kernel was runnable but waiting for its core, so on a busy machine the split
is sound but the total is the CPU meter's.

Needs ``py-spy`` (``pip install py-spy``; it attaches with ptrace, so run as root or
with ``kernel.yama.ptrace_scope = 0``).

    python benchmarks/profile_kernel.py [--workloads fs.stat,fs.write_file,net-echo]
                                        [--duration 5] [--top 15] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from kernelfarm.bench.echo import running_echo
from kernelfarm.bench.runner import write_raw
from kernelfarm.bench.systems import running_farm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers

WORKLOADS = ("fs.stat", "fs.write_file", "net-echo")
SAMPLE_RATE = 500
SPY_SETTLE_S = 1.0
"""Sampling starts this long into the window and stops before it ends."""


def self_time(raw: Path) -> tuple[int, collections.Counter[str]]:
    """Total samples and samples per innermost function of a py-spy raw profile."""
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frame = stack.split(";")[-1]
        name, _, where = frame.partition(" (")
        module = where.split(":")[0].removesuffix(".py")
        key = f"{name} ({module.rpartition('site-packages/')[2]})"
        by_function[key] += int(count)
        total += int(count)
    return total, by_function


def profile(name: str, args: argparse.Namespace, spy: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kernelfarm-profile-") as where, \
            running_farm(["--kernels", "1"], Path(where) / "farm", "always") as farm, \
            running_echo("bytes", cpu=args.load_core) as peer:
        kernel = psutil.Process(farm.server_pids[0]).children()[0]
        plans, per, cleanup = peers.workload(name, farm, peer.address, args)
        raw = Path(where) / "profile.txt"

        def sample() -> None:
            time.sleep(args.warmup + SPY_SETTLE_S)
            seconds = max(1, int(args.duration - 2 * SPY_SETTLE_S))
            subprocess.run([spy, "record", "--pid", str(kernel.pid), "--duration",
                            str(seconds), "--rate", str(SAMPLE_RATE), "--format", "raw",
                            "--output", str(raw), "--nonblocking"],
                           capture_output=True, check=False)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            row = peers.measure(name, plans, [kernel.pid], args, per=per)
        finally:
            sampler.join()
            cleanup()
        total, by_function = self_time(raw) if raw.exists() else (0, collections.Counter())
    cpu_us = row["cpu_us_per_op"]
    top = [{"function": function, "share": count / total, "us_per_op": cpu_us * count / total}
           for function, count in by_function.most_common(args.top)] if total else []
    return {**row, "samples": total, "top": top}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--top", type=int, default=15, help="functions listed per workload")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--out", type=Path, default=peers.RESULTS_DIR)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        parser.error("py-spy is not installed (pip install py-spy)")
    names = [n for n in args.workloads.split(",") if n]
    if not names or any(n not in WORKLOADS for n in names):
        parser.error(f"--workloads takes {', '.join(WORKLOADS)}")
    results = [profile(name, args, spy) for name in names]
    for result in results:
        unit = "round trip" if result["name"] == "net-echo" else "request"
        print(f"\n{result['name']}: {result['ops_per_s']:,.0f}/s, "
              f"{result['cpu_us_per_op']:.2f} µs of kernel CPU per {unit}, "
              f"{result['samples']} samples")
        for entry in result["top"]:
            print(f"  {entry['us_per_op']:6.2f} µs  {entry['share']:6.1%}  {entry['function']}")
    print()
    write_raw(args.out, "profile_kernel", {"workloads": results}, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
