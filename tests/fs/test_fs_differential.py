"""Differential test: random operation sequences against the fs subsystem and a real
directory on the host through ``os`` must give the same results and the same errno.

The model and its deliberate differences from a plain directory live in :mod:`fs_model`
(shared with the same test through a real farm, ``test_fs_farm``).  After each sequence
the whole trees are compared, then the subsystem is restarted from disk and must come
back identical, stat for stat (inode numbers and timestamps included).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fs_harness import FakeKernel
from fs_model import Host, comparable_stat, fs_tree, host_tree, ops, outcome, seed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def farm_side(kernel: FakeKernel, op: str, *args: Any) -> Any:
    result = kernel.call(f"fs.{op}", *args)
    return comparable_stat(result) if op == "stat" else result


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sequence=st.lists(ops, min_size=8, max_size=40), second_volume=st.booleans(),
       snapshot_bytes=st.sampled_from([300, 64 * 1024 * 1024]))
def test_fs_matches_a_real_directory(sequence: list[tuple[Any, ...]], second_volume: bool,
                                     snapshot_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as host_root, \
            tempfile.TemporaryDirectory() as data_dir:
        kernel = FakeKernel(Path(data_dir), fsync="never",
                            snapshot_journal_bytes=snapshot_bytes)
        host = Host(host_root)
        try:
            for op, *args in seed(second_volume) + sequence:
                expected = outcome(host.run, op, *args)
                got = outcome(farm_side, kernel, op, *args)
                assert got == expected, (op, args)
            volumes = kernel.call("fs.listdir", "/")
            assert volumes == host.listdir("/")
            assert fs_tree(kernel.call, volumes) == host_tree(host_root)
            before = fs_tree(kernel.call, volumes, exact=True)
            kernel.restart()
            assert fs_tree(kernel.call, volumes, exact=True) == before
        finally:
            kernel.close()
