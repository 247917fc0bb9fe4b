"""Power cuts through real farms: the data dir on the power-cut file system, writers on
several volumes, then the power goes at a random moment (unsynced state dropped, every
farm process SIGKILLed) and a new farm recovers from what the disk kept.

The cut falls among new files, appends, installs by rename, unlinks, mkdirs, volumes
created and destroyed, snapshots (``snapshot_journal_bytes`` is small, so volumes
snapshot every few writes) and, in partitioned mode, a live slot migration (scale 2 -> 3
-> 2 while the writers write).  ``fsync = "always"``: no acknowledged write is lost and
every volume loads.  ``"never"``: the same rounds must find losses, or the test could not
tell.  ``"batch"``: only writes acknowledged within the last interval may be lost.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelfarm
from farmctl import start_farm, wait_until
from powercut_ctl import PowerCut, powercut_fs
from powercut_model import RETRY, Loss, Model, Writer, files_step, volumes_step

PARTITIONED: tuple[str, ...] = ()
LOCKED = ("--mode", "locked", "--threads", "2")
BATCH_MS = 50
BATCH_SLACK_S = 1.0
"""Scheduling delay allowed on top of the interval (a loaded 2-core machine)."""


BATCH_WINDOW_S = BATCH_MS / 1000 + BATCH_SLACK_S


def config(policy: str) -> str:
    return (f'[fs]\nfsync = "{policy}"\nsnapshot_journal_bytes = 8192\n'
            f"batch_interval_ms = {BATCH_MS}\n")


class Scaler(threading.Thread):
    """Moves slots live for as long as the round lasts: scale 3, scale 2, ..."""

    def __init__(self, control: tuple[str, int]) -> None:
        super().__init__(name="scaler", daemon=True)
        self.client = kernelfarm.Client(control, retry=RETRY)
        self.stop = threading.Event()
        self.moves = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.client.scale(3 if self.moves % 2 == 0 else 2)
                self.moves += 1
        except Exception:  # noqa: BLE001 - the power cut ends it wherever it is
            pass
        finally:
            self.client.close()


def farm_pids(farm: Any) -> list[int]:
    return [farm.proc.pid, *(p.pid for p in farm.kernel_procs())]


def stray_kernels() -> list[int]:
    """Kernels re-parented to the test (it is a subreaper) after their supervisor died."""
    found = []
    for proc in psutil.Process().children():
        try:
            if "kernelfarm.kernel" in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.NoSuchProcess:  # gone, or a zombie: reaped by power_cut's wait
            found.append(proc.pid)
    return found


def rounds(tmp_path: Path, pc: PowerCut, mode: tuple[str, ...], policy: str, count: int,
           migrate: bool, seed: int) -> tuple[list[list[Loss]], list[float], int, int]:
    """Run ``count`` cut rounds; per round the losses found after it and its cut time,
    the total acknowledged changes and the volumes that failed to load."""
    rng = random.Random(seed)
    model = Model()
    data_dir = pc.mount / "data"
    volumes = [f"pc{i}" for i in range(4)]
    losses: list[list[Loss]] = []
    cut_times: list[float] = []
    acked = unloadable = 0
    for round_no in range(count + 1):
        kernels = 1 if mode == LOCKED else 2  # a locked farm is one kernel
        with start_farm(tmp_path, kernels, *mode, config_text=config(policy),
                        data_dir=data_dir, name=f"round{round_no}") as farm:
            client = farm.client(retry=RETRY)
            if round_no > 0:
                stats = client.call_all("kernel.stats")
                unloadable += sum(s["subsystems"]["fs"]["failed"] for s in stats)
                losses.append(model.verify(client))
            if round_no == count:
                break
            if round_no == 0:
                for volume in volumes:
                    model.ack({f"/{volume}": "dir"})
                    client.fs.mkdir(f"/{volume}")
            writers = [Writer(farm.control, model, f"w{i}", files_step(volumes[i], round_no))
                       for i in range(len(volumes))]
            writers.append(Writer(farm.control, model, "vols", volumes_step(f"v{round_no}")))
            scaler = Scaler(farm.control) if migrate and round_no % 2 == 1 else None
            threads: list[Writer | Scaler] = [*writers]
            if scaler is not None:
                threads.append(scaler)
            for thread in threads:
                thread.start()
            target = rng.randint(20, 150)  # the cut's moment: after this many acks
            started = time.monotonic()
            wait_until(lambda: sum(w.acks for w in writers) >= target
                       or any(w.errors for w in writers), what=f"{target} acks")
            if policy == "batch":  # some acks must be older than the window at the cut
                wait_until(lambda: time.monotonic() - started > BATCH_WINDOW_S + 0.3,
                           what="acks older than the batch window")
            cut_times.append(time.monotonic())
            pc.power_cut(farm_pids(farm))
            for thread in threads:
                thread.stop.set()
                thread.join(30)
                assert not thread.is_alive(), f"{thread.name} is stuck"
            pc.power_cut(stray_kernels())  # none expected; a late restart would be one
            assert [e for w in writers for e in w.errors] == []
            acked += sum(w.acks for w in writers)
    return losses, cut_times, acked, unloadable


@pytest.fixture
def pc(tmp_path: Path) -> Any:
    with powercut_fs(tmp_path / "powercut") as mounted:
        yield mounted


@pytest.mark.parametrize("mode,count", [(PARTITIONED, 7), (LOCKED, 5)],
                         ids=["partitioned", "locked"])
def test_fsync_always_loses_nothing_acknowledged(tmp_path: Path, pc: PowerCut,
                                                 mode: tuple[str, ...], count: int) -> None:
    losses, _, acked, unloadable = rounds(tmp_path, pc, mode, "always", count,
                                          migrate=mode == PARTITIONED, seed=count)
    assert acked > 20 * count
    assert [loss for per_round in losses for loss in per_round] == []
    assert unloadable == 0


def test_fsync_never_loses_acknowledged_writes_in_a_power_cut(tmp_path: Path,
                                                              pc: PowerCut) -> None:
    """The same rounds must see the loss: this is what makes the test above meaningful."""
    losses, _, _, unloadable = rounds(tmp_path, pc, PARTITIONED, "never", 4, migrate=False,
                                      seed=4)
    assert sum(len(per_round) for per_round in losses) > 0
    assert unloadable == 0  # torn journals are cut, never fatal


def test_fsync_batch_loses_at_most_the_last_interval(tmp_path: Path, pc: PowerCut) -> None:
    losses, cut_times, _, unloadable = rounds(tmp_path, pc, PARTITIONED, "batch", 4,
                                              migrate=False, seed=5)
    old = [(loss, cut - loss.acked_at)
           for per_round, cut in zip(losses, cut_times, strict=True)
           for loss in per_round if loss.acked_at < cut - BATCH_WINDOW_S]
    assert old == []
    assert unloadable == 0
