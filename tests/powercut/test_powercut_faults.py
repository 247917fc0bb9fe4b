"""Disk faults under a real kernel: a failing fdatasync and a full disk.

The faults come from the power-cut file system (EIO on fsync, ENOSPC past a capacity),
so the kernel meets them in its own system calls, not in a stand-in.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

import kernelfarm
from farmctl import Farm, start_farm, wait_until
from kernelfarm.boot import EXIT_FLUSH_FAILED
from kernelfarm.client.routing import RetryPolicy
from powercut_ctl import PowerCut, powercut_fs
from powercut_model import CUT_OFF, Model, read

KIB = 1024


@pytest.fixture
def pc(tmp_path: Path) -> Iterator[PowerCut]:
    with powercut_fs(tmp_path / "powercut") as mounted:
        yield mounted


def farm_on(tmp_path: Path, pc: PowerCut, config: str = "", name: str = "farm") -> Any:
    return start_farm(tmp_path, 1, config_text=config, data_dir=pc.mount / "data",
                      name=name)


def kernel_pid(farm: Farm) -> int:
    pid: int = farm.cluster_map()["kernels"][0]["pid"]
    return pid


def running(farm: Farm, not_pid: int) -> bool:
    kernel = farm.cluster_map()["kernels"][0]
    return bool(kernel["state"] == "running" and kernel["pid"] != not_pid)


def test_eio_in_fdatasync_exits_the_kernel_without_acknowledging(tmp_path: Path,
                                                                 pc: PowerCut) -> None:
    with farm_on(tmp_path, pc) as farm:
        client = farm.client(retry=RetryPolicy(deadline_s=1.0))
        client.fs.mkdir("/v")
        client.fs.write_file("/v/acked", b"before")
        pid = kernel_pid(farm)
        pc.command("fail-fsync on")
        with pytest.raises(CUT_OFF):  # an error (or retries that end in one), never an ack
            client.fs.write_file("/v/doomed", b"never acknowledged")
        wait_until(lambda: f"exited with code {EXIT_FLUSH_FAILED}" in farm.log(),
                   what="the kernel's exit")
        assert "flush failed; exiting without acknowledging" in farm.log()
        pc.command("fail-fsync off")
        wait_until(lambda: running(farm, pid), what="the kernel to come back")
        reader = farm.client()
        assert reader.fs.read_file("/v/acked") == b"before"
        assert read(reader, "/v/doomed") in (None, b"never acknowledged")
        reader.fs.write_file("/v/after", b"served again")
        pc.power_cut([farm.proc.pid, *(p.pid for p in farm.kernel_procs())])
    with farm_on(tmp_path, pc, name="after") as farm:
        client = farm.client()
        assert client.fs.read_file("/v/acked") == b"before"
        assert client.fs.read_file("/v/after") == b"served again"


def snapshots_quiet(client: kernelfarm.Client) -> bool:
    (stats,) = client.call_all("kernel.stats")
    fs = stats["subsystems"]["fs"]
    return bool(fs["snapshots_running"] == 0 and fs["journals_removing"] == 0)


def fill(client: kernelfarm.Client, model: Model, chunk: bytes) -> int:
    """Write new files until the farm says ENOSPC; the files acknowledged."""
    for n in range(10_000):
        path = f"/v/f{n}"
        model.begin({path: chunk})
        try:
            client.fs.write_file(path, chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return n
        model.ack({path: chunk})
    raise AssertionError("the disk never filled")


def test_full_disk_refuses_writes_with_enospc_and_keeps_serving(tmp_path: Path,
                                                                pc: PowerCut) -> None:
    config = f"[fs]\nreserve_bytes = {256 * KIB}\nsnapshot_journal_bytes = {64 * KIB}\n"
    with farm_on(tmp_path, pc, config) as farm:
        client = farm.client()
        client.fs.mkdir("/v")
        pid = kernel_pid(farm)
        used = int(json.loads(pc.command("stats"))["used"])
        pc.command(f"capacity {used + 2048 * KIB}")
        model = Model()
        acked = fill(client, model, b"x" * (16 * KIB))
        assert acked > 20
        # A snapshot that was being written when the disk filled frees space as it ends
        # (its reserve, the journals it supersedes): fill up again once none is running.
        wait_until(lambda: snapshots_quiet(client), what="running snapshots to end")
        acked += fill(client, model, b"x" * (16 * KIB))
        with pytest.raises(OSError) as info:
            client.fs.pwrite("/v/f0", 0, b"y" * (16 * KIB))
        assert info.value.errno == errno.ENOSPC and "reserve" in str(info.value)
        assert model.verify(client) == []           # reads go on, nothing acked is lost
        assert kernel_pid(farm) == pid              # and no kernel had to die for it
        pc.command("capacity none")
        client.fs.write_file("/v/after", b"room again")
        pc.power_cut([farm.proc.pid, *(p.pid for p in farm.kernel_procs())])
    with farm_on(tmp_path, pc, config, name="after") as farm:
        client = farm.client()
        assert model.verify(client) == []
        assert client.fs.read_file("/v/after") == b"room again"


def test_enospc_in_the_journal_write_itself_loses_nothing_acknowledged(
        tmp_path: Path, pc: PowerCut) -> None:
    """With the reserve off, the journal write meets ENOSPC: the kernel exits without
    acknowledging, and what was acknowledged before is all there."""
    config = "[fs]\nreserve_bytes = 0\n"
    with farm_on(tmp_path, pc, config) as farm:
        client = farm.client(retry=RetryPolicy(deadline_s=1.0))
        client.fs.mkdir("/v")
        used = int(json.loads(pc.command("stats"))["used"])
        pc.command(f"capacity {used + 512 * KIB}")
        model = Model()
        for n in range(1000):
            path = f"/v/f{n}"
            model.begin({path: b"z" * (16 * KIB)})
            try:
                client.fs.write_file(path, b"z" * (16 * KIB))
            except (*CUT_OFF, OSError):
                break
            model.ack({path: b"z" * (16 * KIB)})
        else:
            raise AssertionError("the disk never filled")
        assert "flush failed; exiting without acknowledging" in farm.log()
        pc.command("capacity none")
        wait_until(lambda: farm.cluster_map()["kernels"][0]["state"] == "running",
                   what="the kernel to serve again")
        assert model.verify(farm.client()) == []
