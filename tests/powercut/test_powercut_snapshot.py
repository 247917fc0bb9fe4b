"""``fsync = "never"`` and a power cut in the middle of a snapshot.

What the README promises for ``"never"`` at a power cut: it "may lose any write since the
volume's last snapshot" -- so nothing acknowledged before the last snapshot that
completed.  The cut here falls while the next snapshot is being written: its child is
held (SIGSTOP) after the kernel switched the volume to a new journal and before the
snapshot is installed, then the power goes.  The farm that starts on what the disk kept
must load the volume whole and serve every write acknowledged before the last completed
snapshot began, overwrites and unlinks included; what came after may be lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from farmctl import Farm, start_farm, wait_until
from powercut_ctl import PowerCut, powercut_fs

CONFIG = '[fs]\nfsync = "never"\nsnapshot_journal_bytes = 4096\n'
"""Snapshots every few writes: a journal past 4 KiB and past the last snapshot's size."""
FILLER = b"f" * 16384


@pytest.fixture
def pc(tmp_path: Path) -> Iterator[PowerCut]:
    with powercut_fs(tmp_path / "powercut") as mounted:
        yield mounted


def fs_stats(farm: Farm) -> dict[str, Any]:
    stats: dict[str, Any] = farm.client().call_all("kernel.stats")[0]["subsystems"]["fs"]
    return stats


def snapshot_child(kernel: psutil.Process) -> psutil.Process | None:
    """The kernel's snapshot writer, held with SIGSTOP; None if no snapshot is being
    written now (or its writer finished before it could be held)."""
    for child in kernel.children():
        try:
            if child.name() == "kf-syncer":  # the kernel's other child: its fdatasyncs
                continue
            child.suspend()
            if child.status() == psutil.STATUS_STOPPED:
                return child
        except psutil.NoSuchProcess:
            pass
    return None


def test_a_cut_mid_snapshot_keeps_what_the_last_snapshot_holds(tmp_path: Path,
                                                                pc: PowerCut) -> None:
    data_dir = pc.mount / "data"
    acked = {f"/v/a{i}": f"acknowledged {i}".encode() * 8 for i in range(12)}
    with start_farm(tmp_path, 1, config_text=CONFIG, data_dir=data_dir) as farm:
        client = farm.client()
        client.fs.mkdir("/v")
        for path, data in acked.items():
            client.fs.write_file(path, data)
        client.fs.write_file("/v/a0", b"overwritten")
        acked["/v/a0"] = b"overwritten"
        client.fs.unlink("/v/a1")
        del acked["/v/a1"]
        # A snapshot running now may have begun before the last of those; the one after
        # it began later, so it holds them all.
        wanted = fs_stats(farm)["snapshots"] + 2

        def filled() -> bool:
            client.fs.write_file("/v/filler", FILLER)
            return bool(fs_stats(farm)["snapshots"] >= wanted)

        wait_until(filled, what="two more snapshots")

        kernel = psutil.Process(farm.cluster_map()["kernels"][0]["pid"])
        written = 0

        def held() -> psutil.Process | None:
            nonlocal written
            client.fs.write_file(f"/v/after{written % 4}", FILLER)  # may be lost
            written += 1
            return snapshot_child(kernel)

        child = wait_until(held, what="a snapshot writer caught mid-snapshot")
        assert fs_stats(farm)["snapshots_running"] == 1
        pc.power_cut([farm.proc.pid, kernel.pid, child.pid])

    with start_farm(tmp_path, 1, config_text=CONFIG, data_dir=data_dir,
                    name="after") as farm:
        client = farm.client()
        stats = fs_stats(farm)
        assert (stats["failed"], stats["read_only"], stats["damaged"]) == (0, 0, {})
        assert {path: client.fs.read_file(path) for path in acked} == acked
        assert "a1" not in client.fs.listdir("/v")
        client.fs.write_file("/v/next", b"the volume takes writes")
        assert client.fs.read_file("/v/next") == b"the volume takes writes"
