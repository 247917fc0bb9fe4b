"""Live scaling moves slots between kernels; the map stays complete at every epoch."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from farmctl import start_farm, wait_until
from kernelfarm.partition import NSLOTS
from kernelfarm.supervisor.scaling import batches
from kernelfarm.partition import Move


def owners(cmap: dict[str, Any]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for first, last, kid in cmap["slots"]:
        counts[kid] = counts.get(kid, 0) + last - first + 1
    return counts


def test_batches_group_by_source_and_target_and_cap_their_size() -> None:
    moves = [Move(s, 0, 1) for s in range(600)] + [Move(s, 0, 2) for s in range(600, 610)]
    steps = batches(moves, size=256)
    assert [len(b) for b in steps] == [256, 256, 88, 10]
    assert all(len({(m.source, m.target) for m in b}) == 1 for b in steps)


def test_scale_out_and_in_keeps_every_slot_owned_and_pins_round_robin(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    with start_farm(tmp_path, 1) as farm:
        client = farm.client()
        epoch = farm.cluster_map()["epoch"]
        for n in (2, 3, 1):
            result = client.scale(n)
            cmap = farm.cluster_map()
            assert result["to"] == n and cmap["epoch"] > epoch
            epoch = cmap["epoch"]
            counts = owners(cmap)
            assert sum(counts.values()) == NSLOTS and len(counts) == n
            assert max(counts.values()) - min(counts.values()) <= 1
            kernels = cmap["kernels"]
            assert len(kernels) == n
            for kernel in kernels:
                assert kernel["core"] == cores[kernel["id"] % len(cores)]
                assert psutil.Process(kernel["pid"]).cpu_affinity() == [kernel["core"]]
            for row in client.status()["kernels"]:
                assert row["stats"]["slots"] == counts[row["id"]]   # kernels agree
        assert len(farm.kernel_procs()) == 1                      # removed ones are gone


def test_sigttin_adds_a_kernel_and_sigttou_removes_one(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        farm.proc.send_signal(signal.SIGTTIN)
        wait_until(lambda: len(owners(farm.cluster_map())) == 2
                   and farm.client().status()["migration"] is None, what="scale-out to 2")
        farm.proc.send_signal(signal.SIGTTOU)
        wait_until(lambda: len(farm.cluster_map()["kernels"]) == 1, what="scale-in to 1")
        assert owners(farm.cluster_map()) == {0: NSLOTS}


def test_scale_refuses_nonsense(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        with pytest.raises(OSError) as info:
            farm.client().scale(0)
        assert info.value.errno == 22


def test_the_cli_scales_and_status_shows_a_migration_in_progress(tmp_path: Path) -> None:
    import subprocess
    import sys
    import threading

    config = "[supervisor]\nscale_batch_slots = 16\n"
    with start_farm(tmp_path, 1, config_text=config) as farm:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "kernelfarm", *args, "--control",
                                   farm.control_str], capture_output=True, text=True,
                                  timeout=120)

        outcome: list[subprocess.CompletedProcess[str]] = []
        scaler = threading.Thread(target=lambda: outcome.append(cli("scale", "2")))
        scaler.start()
        shown = wait_until(lambda: "slots moved" in (out := cli("status").stdout) and out,
                           what="status to show the migration")
        assert "scaling 1 -> 2 kernels" in shown
        scaler.join(timeout=120)
        assert outcome[0].returncode == 0, outcome[0].stderr
        assert "1 -> 2 kernels: 8192 slots moved" in outcome[0].stdout
        assert len(farm.cluster_map()["kernels"]) == 2
