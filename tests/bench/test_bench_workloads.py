"""Workload set-up and chains, and the layout of slots over kernels and tenants.

Set-up runs through a recording stand-in for the farm (``FakeFarm``): what matters here
is which calls a workload makes and which requests its chains replay, not how a kernel
serves them.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from kernelfarm.bench.echo import echoed
from kernelfarm.bench.layout import load_cores, plans, spread, streams_needed
from kernelfarm.bench.loadgen import Chain, Request
from kernelfarm.bench.workloads import BLOCK, ECHO_PAYLOAD, WORKLOADS, prepare

ECHO = ("127.0.0.1", 7)


class FakeFarm:
    """Just enough fs/net state to see that set-up leaves the farm as the chains expect."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.volumes: set[str] = set()
        self.files: dict[str, bytes] = {}
        self.sockets: dict[tuple[str, int], Any] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_on = fail_on
        self._next_sid = 0

    def call(self, method: str, *params: Any) -> Any:
        self.calls.append((method, params))
        if method == self.fail_on:
            raise OSError(errno.EIO, "injected failure")
        if method == "fs.mkdir":
            if params[0] in self.volumes:
                raise FileExistsError(errno.EEXIST, params[0])
            self.volumes.add(params[0])
        elif method == "fs.write_file":
            self.files[params[0]] = params[1]
        elif method == "fs.unlink":
            if self.files.pop(params[0], None) is None:
                raise FileNotFoundError(errno.ENOENT, params[0])
        elif method == "net.socket":
            self._next_sid += 1
            self.sockets[(params[0], self._next_sid)] = None
            return self._next_sid
        elif method == "net.connect":
            self.sockets[(params[0], params[1])] = (params[2], params[3])
        elif method == "net.close":
            del self.sockets[(params[0], params[1])]
        return None


def checked(request: Request) -> tuple[str, Sequence[Any], Any]:
    """A request that names the result it must get."""
    assert len(request) == 3, request
    return request


def checked_pair(chain: Chain) -> tuple[tuple[str, Sequence[Any], Any], ...]:
    """A chain of two requests that both name their results."""
    assert len(chain) == 2, chain
    return checked(chain[0]), checked(chain[1])


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_workload_prepares_its_tenants(name: str) -> None:
    farm = FakeFarm()
    prepared = prepare(name, farm.call, {"alice": 3, "bob": 2}, echo_address=ECHO)
    assert farm.volumes == {"/alice", "/bob"}
    assert [len(prepared.chains[t]) for t in ("alice", "bob")] == [3, 2]
    for tenant, chains in prepared.chains.items():
        for chain in chains:
            for method, params, *_ in chain:
                # Routed by the tenant: fs by the volume, net by the namespace.
                key = params[0].split("/")[1] if method.startswith("fs.") else params[0]
                assert key == tenant
                if method in ("fs.stat", "fs.pread", "fs.pwrite"):
                    assert params[0] in farm.files  # they act on files set-up wrote
    prepared.cleanup(farm.call)
    assert farm.sockets == {}


def test_fs_create_gives_every_stream_its_own_file_and_starts_clean() -> None:
    farm = FakeFarm()
    farm.volumes.add("/alice")
    farm.files["/alice/create-1"] = b"left by an interrupted run"
    prepared = prepare("fs-create", farm.call, {"alice": 3})
    paths = []
    for chain in prepared.chains["alice"]:
        (first, (path, data), created), (second, (unlinked,), removed) = checked_pair(chain)
        assert (first, data, second, unlinked) == ("fs.write_file", b"", "fs.unlink", path)
        assert created is removed is None  # the results both must get
        paths.append(path)
    assert len(set(paths)) == 3
    assert not set(paths) & set(farm.files)  # the first request of each chain can create


def test_4k_workloads_move_4_kib() -> None:
    farm = FakeFarm()
    reads = prepare("fs-read-4k", farm.call, {"t": 1}).chain("t", 0)
    writes = prepare("fs-write-4k", farm.call, {"t": 1}).chain("t", 0)
    assert reads == [("fs.pread", ["/t/data.4k", 0, 4096], BLOCK)]  # must read back BLOCK
    assert writes == [("fs.pwrite", ["/t/data.4k", 0, BLOCK], 4096)]
    assert len(BLOCK) == 4096 and farm.files["/t/data.4k"] == BLOCK


def test_net_echo_connects_one_socket_per_stream_to_the_echo_server() -> None:
    farm = FakeFarm()
    prepared = prepare("net-echo", farm.call, {"ns": 4}, echo_address=ECHO)
    sids = set()
    for chain in prepared.chains["ns"]:
        (send, (ns, sid, data), sent), (recv, (ns2, sid2, size, timeout), received) = \
            checked_pair(chain)
        assert (send, recv, ns, ns2, sid2, data) == ("net.send", "net.recv", "ns", "ns", sid,
                                                      ECHO_PAYLOAD)
        assert (sent, received) == (len(ECHO_PAYLOAD), ECHO_PAYLOAD)
        assert size >= len(ECHO_PAYLOAD) and timeout > 0
        assert farm.sockets[("ns", sid)] == ECHO
        sids.add(sid)
    assert len(sids) == 4
    prepared.cleanup(farm.call)
    assert farm.sockets == {}


def test_a_failed_set_up_closes_the_sockets_it_opened() -> None:
    farm = FakeFarm(fail_on="net.connect")
    with pytest.raises(OSError, match="injected"):
        prepare("net-echo", farm.call, {"ns": 2}, echo_address=ECHO)
    assert farm.sockets == {}


def test_mixed_is_mostly_metadata_reads() -> None:
    farm = FakeFarm()
    chain = prepare("mixed", farm.call, {"t": 1}, echo_address=ECHO).chain("t", 0)
    methods = Counter(request[0] for request in chain)
    assert methods["fs.stat"] == 4 and len(chain) == 10
    assert {"fs.pread", "fs.pwrite", "fs.write_file", "fs.unlink", "net.send",
            "net.recv"} <= set(methods)


@pytest.mark.parametrize(("name", "echo", "match"), [
    ("fs-nope", None, "unknown workload"),
    ("net-echo", None, "echo server"),
    ("mixed", ("10.1.2.3", 7), "loopback"),
])
def test_bad_workload_requests_are_refused(name: str, echo: Any, match: str) -> None:
    farm = FakeFarm()
    with pytest.raises(ValueError, match=match):
        prepare(name, farm.call, {"t": 1}, echo_address=echo)
    assert farm.calls == []


# -- layout --------------------------------------------------------------------------------

K1, K2, K3 = ("127.0.0.1", 1001), ("127.0.0.1", 1002), ("127.0.0.1", 1003)


def test_every_slot_gets_its_own_stream_on_the_owning_kernel() -> None:
    owners = {f"t{i}": (K1, K2, K3)[i % 3] for i in range(10)}
    layouts = spread(owners, connections=7, depth=5)
    assert len(layouts) == 7 and all(len(layout.streams) == 5 for layout in layouts)
    streams = [stream for layout in layouts for stream in layout.streams]
    assert len(set(streams)) == len(streams)
    for layout in layouts:
        assert all(owners[tenant] == layout.address for tenant, _ in layout.streams)
    needed = streams_needed(layouts)
    assert sum(needed.values()) == 35
    assert Counter(tenant for tenant, _ in streams) == needed


def test_kernels_get_connections_in_proportion_to_their_tenants() -> None:
    owners = {f"t{i}": K1 for i in range(6)} | {f"u{i}": K2 for i in range(2)}
    layouts = spread(owners, connections=8, depth=1)
    assert Counter(layout.address for layout in layouts) == {K1: 6, K2: 2}
    # and every kernel is reached even when its share rounds to nothing
    few = spread({"a": K1, "b": K1, "c": K1, "d": K2}, connections=2, depth=1)
    assert {layout.address for layout in few} == {K1, K2}


def test_layout_becomes_plans_over_prepared_chains() -> None:
    farm = FakeFarm()
    layouts = spread({"alice": K1, "bob": K2}, connections=2, depth=3)
    prepared = prepare("fs-create", farm.call, streams_needed(layouts))
    connection_plans = plans(layouts, prepared)
    assert [plan.address for plan in connection_plans] == [K1, K2]
    first_paths = [chain[0][1][0] for plan in connection_plans for chain in plan.chains]
    assert len(set(first_paths)) == 6
    # Against the echo floor each request must get its first param back instead.
    echo_plans = plans(layouts, prepared, echoed)
    assert [checked(request)[2] for plan in echo_plans for chain in plan.chains
            for request in chain] \
        == [request[1][0] for plan in connection_plans for chain in plan.chains
            for request in chain]


def test_load_processes_go_to_spare_cores_else_to_the_core_of_the_kernel_they_drive(
        ) -> None:
    addresses = [K1] * 4 + [K2] * 4  # as spread lays them out: grouped by kernel
    # A server alone on its core: the load on the cores it leaves.
    assert load_cores(addresses, {K1: 0, K2: 1}, 2, busy=1, allowed=[0, 1]) == [1, 1]
    assert load_cores(addresses, {}, 3, busy=2, allowed=[0, 1, 2, 3]) == [2, 3, 2]
    # No core left: each process beside the kernel whose connections it drives.
    assert load_cores(addresses, {K1: 1, K2: 0}, 2, busy=2, allowed=[0, 1]) == [1, 0]
    # A server with no core of its own (a locked kernel's threads): round the cores.
    assert load_cores([K3] * 8, {}, 2, busy=2, allowed=[0, 1]) == [0, 1]
    with pytest.raises(ValueError, match="no cores"):
        load_cores(addresses, {}, 2, busy=1, allowed=[])


def test_impossible_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot reach"):
        spread({"a": K1, "b": K2}, connections=1, depth=1)
    with pytest.raises(ValueError, match="no tenants"):
        spread({}, connections=1, depth=1)
    with pytest.raises(ValueError, match="depth"):
        spread({"a": K1}, connections=1, depth=0)
