"""The syncer child of a unicpu kernel: made at boot, gone with its kernel, and a kernel
whose syncer dies stops loudly instead of acknowledging what nobody synced."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from farmctl import Farm, gone, start_farm, wait_until
from kernelfarm.boot import EXIT_FLUSH_FAILED


def syncer_of(kernel: psutil.Process) -> psutil.Process:
    (child,) = [p for p in kernel.children() if p.name() == "kf-syncer"]
    return child


def only_kernel(farm: Farm) -> psutil.Process:
    (kernel,) = farm.kernel_procs()
    return kernel


def test_each_kernel_has_one_syncer_and_its_stats_count_syncs(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        kernel = only_kernel(farm)
        syncer = syncer_of(kernel)
        assert syncer.cpu_affinity() == kernel.cpu_affinity()  # the kernel's core
        assert syncer.num_fds() < 8  # its socket and stdio: not the kernel's descriptors
        client = farm.client()
        client.fs.mkdir("/v")
        for n in range(5):
            client.fs.write_file(f"/v/f{n}", b"x")
        (stats,) = client.call_all("kernel.stats")
        assert stats["syncs_behind"] >= 5  # the fsync policy is "always": one per write
        assert stats["sync_behind_fds"] >= stats["syncs_behind"]
        assert stats["group_commit_replies"] >= 5


def test_the_syncer_goes_with_its_kernel(tmp_path: Path) -> None:
    """kill -9 of a kernel takes its syncer too; a clean stop reaps every syncer."""
    with start_farm(tmp_path, 1) as farm:
        kernel = only_kernel(farm)
        syncer = syncer_of(kernel)
        os.kill(kernel.pid, signal.SIGKILL)
        wait_until(lambda: gone(syncer.pid), what="the syncer of the killed kernel to go")
        wait_until(lambda: farm.kernel_procs() and farm.kernel_procs()[0].pid != kernel.pid
                   and farm.cluster_map()["kernels"][0]["state"] == "running",
                   what="the kernel's restart")
        again = syncer_of(only_kernel(farm))
        farm.client().fs.mkdir("/v")
    wait_until(lambda: gone(again.pid), what="the restarted kernel's syncer to go")


def test_a_dead_syncer_stops_its_kernel_loudly(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        client = farm.client()
        client.fs.mkdir("/v")
        client.fs.write_file("/v/acked", b"before")
        kernel = only_kernel(farm)
        os.kill(syncer_of(kernel).pid, signal.SIGKILL)
        wait_until(lambda: f"exited with code {EXIT_FLUSH_FAILED}" in farm.log(),
                   what="the kernel's exit")
        assert "the syncer is gone" in farm.log()
        wait_until(lambda: gone(kernel.pid), what="the old kernel to go")
        wait_until(lambda: farm.cluster_map()["kernels"][0]["state"] == "running",
                   what="the kernel's restart")
        assert client.fs.read_file("/v/acked") == b"before"
        client.fs.write_file("/v/after", b"served again")
        assert client.fs.read_file("/v/after") == b"served again"
