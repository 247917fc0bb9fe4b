"""A kernel's own limits: it dies with its supervisor, and its descriptors and net state
stay bounded whatever clients do."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import msgpack
import psutil
import pytest

import rawpeer
from farmctl import Farm, gone, raw_call, start_farm, wait_until
from rawpeer import Peer


def test_a_kernel_that_cannot_run_dies_within_a_second_of_its_supervisor(
        tmp_path: Path) -> None:
    """PDEATHSIG must not need the kernel's loop: a stopped kernel is the busiest there is
    (a handled SIGTERM would wait for it forever)."""
    with start_farm(tmp_path, 1) as farm:
        kernel = farm.kernel_pids()[0]
        os.kill(kernel, signal.SIGSTOP)
        try:
            os.kill(farm.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: gone(kernel), timeout=5.0, what="the kernel to die")
            assert time.monotonic() - killed < 1.0
        finally:
            if not gone(kernel):
                os.kill(kernel, signal.SIGKILL)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    config = "[net]\nmax_sockets = 40\nmax_kernel_sockets = 50\n"
    with start_farm(tmp_path_factory.mktemp("limits"), 1, config_text=config) as farm:
        yield farm


def net_stats(farm: Farm) -> dict[str, int]:
    addr = rawpeer.kernel_addr(farm.cluster_map())
    return raw_call(addr, "kernel.stats")["subsystems"]["net"]  # type: ignore[no-any-return]


def test_three_namespaces_cannot_take_more_than_the_kernel_cap(farm: Farm) -> None:
    peer = Peer(rawpeer.kernel_addr(farm.cluster_map()))
    calls = [[0, i, "net.socket", [f"tenant-{i % 3}", "tcp"]] for i in range(120)]
    peer.send(b"".join(msgpack.packb(c) for c in calls))
    replies = [peer.next_message() for _ in calls]
    opened = [r for r in replies if r[2] is None]
    refused = [r for r in replies if r[2] is not None]
    assert len(opened) == 50
    assert {r[2]["code"] for r in refused} == {"EMFILE"}
    assert any("net.max_kernel_sockets=50" in r[2]["message"] for r in refused)
    assert net_stats(farm)["sockets"] == 50
    peer.close()  # its sockets go with it, and their namespaces with them
    wait_until(lambda: net_stats(farm)["namespaces"] == 0, what="namespaces to be freed")
    assert net_stats(farm)["sockets"] == 0


def test_50000_one_off_namespaces_leave_nothing_behind(farm: Farm) -> None:
    addr = rawpeer.kernel_addr(farm.cluster_map())
    kernel = psutil.Process(farm.kernel_pids()[0])

    def one_round(first: int) -> None:
        peer = Peer(addr)
        calls = [[0, i, "net.socket", [f"once-{first + i}", "udp"]] for i in range(40)]
        closes = []
        peer.send(b"".join(msgpack.packb(c) for c in calls))
        for reply in (peer.next_message() for _ in calls):
            assert reply[2] is None, reply
            closes.append([0, reply[1], "net.close", [f"once-{first + reply[1]}", reply[3]]])
        peer.send(b"".join(msgpack.packb(c) for c in closes))
        assert all(peer.next_message()[2] is None for _ in closes)
        peer.close()

    for first in range(0, 5000, 40):  # warm up: allocator arenas, connection objects
        one_round(first)
    before = kernel.memory_info().rss
    for first in range(5000, 55000, 40):
        one_round(first)
    assert net_stats(farm)["namespaces"] == 0
    grown = kernel.memory_info().rss - before
    # 50,000 kept namespaces cost about 35 MB.  The kernels' malloc uses huge pages, so
    # RSS moves in 2 MiB steps: 4.6, 6.7 and 8.8 MiB were all seen for the same run.
    assert grown < 16 * 1024 * 1024, grown


def test_long_one_off_keys_leave_nothing_behind(farm: Farm) -> None:
    """Keys are remembered (their slot, a tenant's grant) so a repeated key costs a dict
    lookup -- but not long ones: 2,000 distinct 100 KB namespace and volume names grew a
    kernel by about 190 MiB each when every one was kept (up to 65,536 of them)."""
    addr = rawpeer.kernel_addr(farm.cluster_map())
    kernel = psutil.Process(farm.kernel_pids()[0])
    token = raw_call(farm.control, "tenant.add", "longkeys", ["*"], ["*"])["token"]
    long = "k" * 100_000

    def one_round(peer: Peer, first: int) -> None:
        calls = [[0, i, "net.stats", [f"{first + i}{long}"]] for i in range(50)] + \
            [[0, 50 + i, "fs.stat", [f"/{first + i}{long}/f"]] for i in range(50)]
        peer.send(b"".join(msgpack.packb(c) for c in calls))
        for reply in (peer.next_message() for _ in calls):
            assert reply[2] is None or reply[2]["code"] == "ENAMETOOLONG", reply

    admin, tenant = Peer(addr), Peer(addr, token=token)
    for peer in (admin, tenant):
        one_round(peer, 0)  # warm up
    before = kernel.memory_info().rss
    for first in range(100, 2100, 50):
        for peer in (admin, tenant):
            one_round(peer, first)
    grown = kernel.memory_info().rss - before
    admin.close()
    tenant.close()
    assert grown < 48 * 1024 * 1024, grown


def fit_in_child(soft: int, hard: int) -> dict[str, int]:
    """Run ``fit_descriptors`` with the default config in a process with these limits."""
    code = ("import json, resource; from kernelfarm.config import load; "
            "from kernelfarm.kernel.process import fit_descriptors; "
            "c = fit_descriptors(load()); "
            "print(json.dumps({'connections': c.rpc.max_connections, "
            "'sockets': c.net.max_kernel_sockets, "
            "'soft': resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_descriptor_limit_is_raised_where_the_host_allows() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 2048 + 4096 + 256 + 64, "this host cannot run the test"
    fitted = fit_in_child(256, hard)
    assert fitted["soft"] >= 2048 + 4096 + 256
    assert (fitted["connections"], fitted["sockets"]) == (2048, 4096)


def test_caps_shrink_to_fit_a_host_that_allows_few_descriptors() -> None:
    fitted = fit_in_child(1000, 1000)
    assert fitted["soft"] == 1000
    assert fitted["connections"] + fitted["sockets"] + 256 + 64 <= 1000
    assert fitted["connections"] > 0 and fitted["sockets"] > 0
