"""A scaling step has no fixed deadline: it goes on while it makes progress, and one that is
stuck fails with a clear error, rolled back, the farm as it was.

``supervisor.scale_stall_timeout`` is 0.5 s here; the kernels run through
``hanging_kernel.py``, whose ``$SLOW_RELEASE``, ``$STUCK_ACQUIRE`` and ``$STUCK_SET_TABLE``
make a step slow or stuck.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farmctl import Farm, loaded, moving_namespace, raw_call, start_farm
from hanging_kernel import ENTRY, SLOW_RELEASE, STUCK_ACQUIRE, STUCK_SET_TABLE
from kernelfarm.partition import NSLOTS

CONFIG = ("[supervisor]\nheartbeat_interval = 0.1\nscale_stall_timeout = 0.5\n"
          "scale_batch_slots = 16384\n")


def a_file_in_a_moving_volume(farm: Farm) -> str:
    path = f"/{moving_namespace()}/kept"
    client = farm.client()
    client.fs.mkdir(path.rpartition("/")[0])
    client.fs.write_file(path, b"acknowledged")
    return path


def test_a_step_goes_on_past_the_stall_timeout_while_it_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source's release takes 2 s, four stall timeouts, with its loop held by that
    work (as flushing thousands of volumes does): the step is not failed for it."""
    monkeypatch.setenv(SLOW_RELEASE, "2.0")
    with start_farm(tmp_path, 1, config_text=CONFIG, entry=ENTRY) as farm:
        path = a_file_in_a_moving_volume(farm)
        result = raw_call(farm.control, "cluster.scale", 2, timeout=loaded(60))
        assert (result["to"], result["moved"]) == (2, NSLOTS // 2)
        assert result["seconds"] >= 2.0
        assert "rolling back" not in farm.log()
        assert farm.client().fs.read_file(path) == b"acknowledged"


def test_a_stuck_step_fails_clearly_and_leaves_the_farm_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new kernel's acquire never ends while its loop turns: each attempt fails after
    the stall timeout and is rolled back, the scale fails saying why, the kernel it
    started goes, and every slot is served where it was."""
    monkeypatch.setenv(STUCK_ACQUIRE, "1")
    with start_farm(tmp_path, 1, config_text=CONFIG, entry=ENTRY) as farm:
        path = a_file_in_a_moving_volume(farm)
        with pytest.raises(RuntimeError) as failed:
            raw_call(farm.control, "cluster.scale", 2, timeout=loaded(60))
        assert "kernel 1: kernel.acquire made no progress" in str(failed.value)
        cluster = farm.cluster_map()
        assert [kernel["id"] for kernel in cluster["kernels"]] == [0]
        assert cluster["slots"] == [[0, NSLOTS - 1, 0]]
        client = farm.client()
        assert client.fs.read_file(path) == b"acknowledged"
        client.fs.write_file(path, b"still served")
        assert client.fs.read_file(path) == b"still served"


def test_a_kernel_stuck_adopting_a_table_is_restarted_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new kernel's ``kernel.set_table`` never ends while its loop turns: the publish
    gives up on it after the stall timeout (not a fixed 10 s), kills it, and it boots
    with the current table, serving the slots the scale gave it."""
    monkeypatch.setenv(STUCK_SET_TABLE, "1")
    with start_farm(tmp_path, 1, config_text=CONFIG, entry=ENTRY) as farm:
        path = a_file_in_a_moving_volume(farm)
        result = raw_call(farm.control, "cluster.scale", 2, timeout=loaded(60))
        assert (result["to"], result["moved"]) == (2, NSLOTS // 2)
        assert "kernel 1: kernel.set_table made no progress" in farm.log()
        client = farm.client()
        assert client.fs.read_file(path) == b"acknowledged"
        client.fs.write_file(path, b"served by the restarted kernel")
        assert client.fs.read_file(path) == b"served by the restarted kernel"
