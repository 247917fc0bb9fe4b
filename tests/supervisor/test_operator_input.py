"""What an operator types must not hurt the farm: sizes it cannot run are refused at once,
a long scale shows progress and can be cancelled or retargeted, SIGTERM does not wait for
it, and ``fs rm -r /`` is refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


from farmctl import Farm, start_farm, wait_until
from kernelfarm.partition import NSLOTS


def cli(farm: Farm, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kernelfarm", *args, "--control",
                           farm.control_str], capture_output=True, text=True, timeout=timeout)


def owners(cluster_map: dict[str, Any]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for first, last, kid in cluster_map["slots"]:
        counts[kid] = counts.get(kid, 0) + last - first + 1
    return counts


def test_scale_beyond_max_kernels_is_refused_at_once(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        started = time.monotonic()
        result = cli(farm, "scale", "100000")
        assert time.monotonic() - started < 10  # the CLI's start-up, not 100,000 kernels
        assert result.returncode != 0
        most = 4 * len(os.sched_getaffinity(0))  # the default: four per allowed core
        assert f"at most {most}" in result.stderr, result.stderr
        assert "supervisor.max_kernels" in result.stderr
        assert "Traceback" not in result.stderr
        result = cli(farm, "scale", "0")
        assert result.returncode != 0 and "at least one kernel" in result.stderr
        assert len(farm.cluster_map()["kernels"]) == 1


def test_scale_prints_progress_and_ctrl_c_cancels_cleanly(tmp_path: Path) -> None:
    # 7 kernels to boot and 896 batches to move: the first progress line comes long
    # before the end, and Ctrl-C then lands in the middle.
    config = "[supervisor]\nscale_batch_slots = 16\n"
    with start_farm(tmp_path, 1, config_text=config) as farm:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernelfarm", "scale", "8", "--control", farm.control_str],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # progress arrives while the scale runs
        assert first.startswith("scaling 1 -> 8 kernels:"), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "cancelling" in err and out.strip().endswith("cancelled"), (out, err)
        # A consistent farm: every slot owned by a running kernel, no idle kernel left.
        cluster = farm.cluster_map()
        assert sum(owners(cluster).values()) == NSLOTS
        assert set(owners(cluster)) == {k["id"] for k in cluster["kernels"]}
        assert all(k["state"] == "running" for k in cluster["kernels"])
        assert len(cluster["kernels"]) < 8
        assert farm.client().status()["migration"] is None


def test_a_new_scale_call_retargets_the_running_one(tmp_path: Path) -> None:
    # Small batches keep the scale running for seconds: with 1024-slot batches a quiet machine
    # finished 1 -> 4 before one status call (which asks every kernel) came back, and the
    # test never saw the scale it meant to retarget.
    config = "[supervisor]\nscale_batch_slots = 16\n"
    with start_farm(tmp_path, 1, config_text=config) as farm:
        outcome: list[dict[str, Any]] = []
        grow = threading.Thread(target=lambda: outcome.append(farm.client().scale(4)))
        grow.start()
        wait_until(lambda: farm.client().status()["migration"], what="the scale to start")
        result = farm.client().scale(2)
        grow.join(timeout=120)
        assert result["to"] == 2 and outcome[0]["to"] == 2
        cluster = farm.cluster_map()
        assert len(cluster["kernels"]) == 2
        assert sorted(owners(cluster).values()) == [NSLOTS // 2, NSLOTS // 2]


def test_sigterm_during_a_scale_stops_the_scale_first(tmp_path: Path) -> None:
    """SIGTERM ends the scale before anything else stops: its driver is aborted (and says
    so) before the first kernel is asked to stop.  The process exiting promptly is not
    enough to show it: the supervisor's tasks are all cancelled at the very end anyway,
    so without the abort the scale ran on while its kernels were being stopped."""
    config = "[supervisor]\nscale_batch_slots = 1\nmax_kernels = 6\n"
    with start_farm(tmp_path, 1, config_text=config) as farm:
        assert "at most 6" in cli(farm, "scale", "7").stderr  # the configured limit
        threading.Thread(target=lambda: cli(farm, "scale", "6"), daemon=True).start()
        wait_until(lambda: farm.client().status()["migration"], what="the scale to start")
        started = time.monotonic()
        farm.proc.send_signal(signal.SIGTERM)
        farm.proc.wait(timeout=30)
        elapsed = time.monotonic() - started
        log = farm.log()
        # Seconds, not minutes: the scale left alone runs 16,384 one-slot steps.  (Stopping
        # six kernels takes 1-2 s idle and far longer on a machine running other suites.)
        assert elapsed < 20.0 and farm.proc.returncode == 0, (elapsed, log[-3000:])
    lines = log.splitlines()
    signalled = next(i for i, line in enumerate(lines) if "received SIGTERM" in line)
    stopped = [i for i, line in enumerate(lines) if "scale stopped: the supervisor is "
               "stopping" in line]
    kernels_stopping = [i for i, line in enumerate(lines) if i > signalled
                        and re.search(r"kernel \d+ stopping", line)]
    assert len(stopped) == 1 and kernels_stopping, log[-3000:]
    assert signalled < stopped[0] < kernels_stopping[0], log[-3000:]
    assert "scaled 1 -> " not in log  # the scale never finished


def test_rm_r_of_the_root_is_refused(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        client = farm.client()
        client.fs.mkdir("/keep")
        client.fs.write_file("/keep/f", b"precious")
        for args in (["fs", "rm", "-r", "/"], ["fs", "rm", "-r", "//"],
                     ["fs", "rm", "-r", "/keep/.."]):
            result = cli(farm, *args)
            assert result.returncode != 0, args
            assert "refusing to remove '/'" in result.stderr, result.stderr
        assert client.fs.read_file("/keep/f") == b"precious"


def test_serve_refuses_more_kernels_or_threads_than_max_kernels(tmp_path: Path) -> None:
    """`serve --kernels 100000` started them all (35 MB each), while `scale 100000` was
    refused: the same bound now holds before anything starts or binds."""
    most = 4 * len(os.sched_getaffinity(0))
    for flags in (["--kernels", str(most + 1)],
                  ["--mode", "locked", "--threads", "100000"]):
        result = subprocess.run(
            [sys.executable, "-m", "kernelfarm", "serve", *flags, "--data-dir",
             str(tmp_path / "data"), "--control", "127.0.0.1:0", "--metrics", "off"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"this farm runs at most {most} (supervisor.max_kernels" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "data").exists()  # refused before it touched the data dir


def test_a_new_data_dir_is_private(tmp_path: Path) -> None:
    """0700 whatever the umask (it was 0755: volume names and journal sizes for anyone).
    Started by hand: start_farm makes the data dir first, to put the admin token there."""
    data = tmp_path / "new" / "data"
    previous = os.umask(0o022)  # the usual one, inherited by the daemon
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernelfarm", "serve", "--kernels", "1", "--data-dir",
             str(data), "--control", "127.0.0.1:0", "--metrics", "off"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    finally:
        os.umask(previous)
    try:
        assert proc.stdout is not None
        assert '"event": "ready"' in proc.stdout.readline()
        assert data.stat().st_mode & 0o777 == 0o700
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
