"""A kernel busy loading a big volume is not killed for it, at boot or on acquire.

The volume is made on disk beforehand with the project's own volume code: a journal of
3 million records (54 MB, written in a blink as one record repeated, but replayed one
by one: seconds of loading, past the boot timeout even on a fast idle machine with the
compiled accelerator, which replays 1.5 million in under 2 s).  The
farm's boot timeout and heartbeat timeout are set far below that.  A kernel that loaded
in one go would miss its boot deadline at start (killed and retried until marked failed)
and, when scaling moves the volume to a new kernel, would leave its pings unanswered
during the acquire (killed as hung).  Loading in slices of the loop, with progress
reports extending the boot deadline, it keeps its pid and serves.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import msgpack

from farmctl import raw_call, start_farm
from kernelfarm.fs import store
from kernelfarm.fs.journal import HEADER
from kernelfarm.fs.tree import UNLIMITED
from kernelfarm.fs.volume import WRITE_FILE, Volume
from kernelfarm.partition import initial_assignment, key_slot, rebalance_plan

RECORDS = 3_000_000
BOOT_TIMEOUT_S = 2.0
CONFIG = (f"[supervisor]\nboot_timeout = {BOOT_TIMEOUT_S}\nboot_retries = 1\n"
          "heartbeat_interval = 0.2\nheartbeat_timeout = 1.5\n")


def moving_name() -> str:
    """A volume name whose slot scaling from one kernel to two gives to the new one."""
    moved = {m.slot for m in rebalance_plan(initial_assignment([0]), [0, 1])}
    return next(name for name in (f"big{n}" for n in range(1000)) if key_slot(name) in moved)


def make_big_volume(data_dir: Path, name: str) -> None:
    directory = Path(store.slot_dir(data_dir, key_slot(name))) / store.volume_dirname(name)
    journal = Volume.create(name, str(directory), 0o755, 1, UNLIMITED).journal
    payload = msgpack.packb((WRITE_FILE, ("f",), b"loaded", 2, 1), use_bin_type=True)
    record = HEADER.pack(len(payload), zlib.crc32(payload, journal.seed)) + payload
    with open(journal.path, "r+b") as fh:
        fh.seek(journal.size)
        fh.write(record * RECORDS)


def test_kernel_loading_a_big_volume_is_not_killed_at_boot_or_acquire(
        tmp_path: Path) -> None:
    name = moving_name()
    data_dir = tmp_path / "data"
    make_big_volume(data_dir, name)
    started = time.monotonic()
    with start_farm(tmp_path, 1, config_text=CONFIG, data_dir=data_dir) as farm:
        # Booting took longer than the boot timeout: the test tests something.
        booted_in = time.monotonic() - started
        assert booted_in > BOOT_TIMEOUT_S, f"booted in {booted_in:.2f} s: load more records"
        client = farm.client(timeout=60)
        assert client.fs.read_file(f"/{name}/f") == b"loaded"
        (booted,) = farm.cluster_map()["kernels"]

        result = raw_call(farm.control, "cluster.scale", 2, timeout=120)
        assert result["to"] == 2

        status = raw_call(farm.control, "cluster.status")
        warnings = [line for line in farm.log().splitlines() if " INFO " not in line]
        assert [k["restarts"] for k in status["kernels"]] == [0, 0], warnings
        assert status["kernels"][0]["pid"] == booted["pid"]
        owners = {kid for first, last, kid in farm.cluster_map()["slots"]
                  if first <= key_slot(name) <= last}
        assert owners == {1}
        assert status["kernels"][1]["stats"]["subsystems"]["fs"]["volumes"] == 1
        assert client.fs.read_file(f"/{name}/f") == b"loaded"
        log = farm.log()
        assert "boot failed" not in log and "did not answer its heartbeat" not in log
