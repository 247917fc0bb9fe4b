"""Live scaling under load: no error reaches clients, no acknowledged write is lost,
whatever dies in the middle of a migration."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

import kernelfarm
from farmctl import Farm, gone, start_farm, wait_until
from kernelfarm.partition import NSLOTS
from kernelfarm.supervisor.scaling import MIGRATION_FILE

VOLUMES = [f"tenant{i}" for i in range(24)]


class Writers:
    """Threads that write and read back across all volumes until stopped."""

    def __init__(self, farm: Farm, count: int = 3,
                 tolerate: tuple[type[Exception], ...] = ()) -> None:
        self.farm = farm
        self.tolerate = tolerate
        self.acked: dict[str, bytes] = {}
        self.errors: list[str] = []
        self.tolerated = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]

    def _run(self, worker: int) -> None:
        client = kernelfarm.Client(self.farm.control)
        mine: list[str] = []
        n = 0
        try:
            while not self._stop.is_set():
                volume = VOLUMES[(worker * 7 + n) % len(VOLUMES)]
                path, data = f"/{volume}/w{worker}-{n}", f"{worker}:{n}".encode()
                try:
                    client.fs.write_file(path, data)
                    self.acked[path] = data
                    mine.append(path)
                    check = mine[(n * 31) % len(mine)]
                    if client.fs.read_file(check) != self.acked[check]:
                        self.errors.append(f"{check} read back wrong")
                except self.tolerate:
                    self.tolerated += 1   # unacknowledged: may or may not have been applied
                except Exception as exc:  # noqa: BLE001 - every other error is a failure
                    self.errors.append(f"{path}: {exc!r}")
                n += 1
        finally:
            client.close()

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: len(self.acked) >= 20, what="writers to get going")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def verify(self, farm: Farm) -> None:
        with kernelfarm.Client(farm.control) as client:
            missing = [p for p, d in self.acked.items() if client.fs.read_file(p) != d]
        assert missing == []


def make_volumes(farm: Farm) -> None:
    client = farm.client()
    for volume in VOLUMES:
        client.fs.mkdir(f"/{volume}")


def assert_one_owner_per_slot(farm: Farm) -> None:
    cmap = farm.cluster_map()
    counts: dict[int, int] = {}
    for first, last, kid in cmap["slots"]:
        counts[kid] = counts.get(kid, 0) + last - first + 1
    assert sum(counts.values()) == NSLOTS
    status = farm.client().status()
    held = {row["id"]: row["stats"]["slots"] for row in status["kernels"]}
    assert sum(held.values()) == NSLOTS            # no slot held twice or dropped
    assert all(held[k] == counts.get(k, 0) for k in held)


def test_clients_see_no_error_while_the_farm_goes_1_2_4_2_1(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        make_volumes(farm)
        control = farm.client()
        with Writers(farm) as writers:
            for n in (2, 4, 2, 1):
                before = len(writers.acked)
                assert control.scale(n)["to"] == n
                wait_until(lambda: len(writers.acked) > before + 10,
                           what=f"writes to continue at {n} kernels")
        assert writers.errors == []
        assert len(writers.acked) > 100
        writers.verify(farm)
        assert_one_owner_per_slot(farm)


def migrating(farm: Farm) -> bool:
    progress = farm.client().status()["migration"]
    return bool(progress and progress["slots_moved"] > 0)


@pytest.mark.parametrize("victim", ["source", "target"])
def test_kill_9_of_a_kernel_mid_migration_loses_nothing(tmp_path: Path, victim: str) -> None:
    # The kill lands inside a batch (the supervisor is held with SIGSTOP while a batch's
    # record exists), so batches can be big enough for the whole scale to take seconds,
    # not minutes, on a loaded machine.
    config = "[supervisor]\nrestart_backoff = 0.01\nscale_batch_slots = 64\n"
    with start_farm(tmp_path, 1, config_text=config) as farm:
        make_volumes(farm)
        control = farm.client()
        with Writers(farm, tolerate=(kernelfarm.errors.ConnectionLost,)) as writers:
            scaler = threading.Thread(target=lambda: control.scale(2))
            scaler.start()
            kid = 0 if victim == "source" else 1
            pid = wait_until(lambda: kernel_pid(farm, kid), what=f"kernel {kid} to start")
            # (cluster_map asks the supervisor: read the pid before holding it)
            wait_until(lambda: frozen_mid_batch(farm), what="the supervisor caught mid-batch")
            os.kill(pid, signal.SIGKILL)
            psutil.Process(farm.proc.pid).resume()
            scaler.join(timeout=120)
            assert not scaler.is_alive()
        assert writers.errors == []
        wait_until(lambda: all(k["state"] == "running" for k in farm.cluster_map()["kernels"]),
                   what="the killed kernel to be back")
        writers.verify(farm)
        assert_one_owner_per_slot(farm)
        assert len(farm.cluster_map()["kernels"]) == 2


def test_kill_9_of_the_supervisor_mid_migration_loses_nothing(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1, config_text="[supervisor]\nscale_batch_slots = 8\n") as farm:
        make_volumes(farm)
        data_dir = farm.data_dir
        writers = Writers(farm, tolerate=(kernelfarm.errors.ConnectionLost, OSError,
                                          kernelfarm.errors.KernelfarmError))
        with writers:
            control = farm.client()
            threading.Thread(target=lambda: _ignore_errors(control.scale, 4),
                             daemon=True).start()
            wait_until(lambda: migrating(farm), what="the migration to start")
            pids = farm.kernel_pids()
            wait_until(lambda: frozen_mid_batch(farm), what="the supervisor caught mid-batch")
            farm.proc.kill()
            farm.proc.wait()
        wait_until(lambda: all(gone(pid) for pid in pids), what="old kernels to exit")
    with start_farm(tmp_path, 2, data_dir=data_dir, name="again") as farm:
        writers.verify(farm)
        assert_one_owner_per_slot(farm)
        assert "in the middle of moving slots" in farm.log()


def kernel_pid(farm: Farm, kid: int) -> int | None:
    """The pid of kernel ``kid`` once it serves, else ``None``."""
    return next((k["pid"] for k in farm.cluster_map()["kernels"]
                 if k["id"] == kid and k["state"] == "running"), None)


def frozen_mid_batch(farm: Farm) -> bool:
    """Stop the supervisor (SIGSTOP) and keep it stopped if a batch of slots is in flight
    (its ``migration.json`` exists); otherwise let it run on.  Between two batches -- while
    the scale starts its next kernel -- there is no batch to interrupt, and a kill there
    would leave nothing for the next supervisor to report."""
    supervisor = psutil.Process(farm.proc.pid)
    supervisor.suspend()
    wait_until(lambda: supervisor.status() == psutil.STATUS_STOPPED, what="SIGSTOP to land")
    if (farm.data_dir / MIGRATION_FILE).exists():
        return True
    supervisor.resume()
    return False


def _ignore_errors(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the supervisor is killed under it on purpose
        pass
