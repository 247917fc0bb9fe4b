"""fs through a real farm: ``kernelfarm serve`` processes on 127.0.0.1 and the project's
clients, in both modes (partitioned: two unicpu kernels; locked: one kernel, two threads).

One farm per mode serves the whole module; every test and every hypothesis example makes
volumes of its own (fresh names), so they never see each other's files.  In partitioned
mode the test picks volume names whose slots land in different kernels, so requests are
routed to both and a rename between them crosses kernels.
"""

from __future__ import annotations

import errno
import tempfile
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernelfarm
import kernelfarm.aio
from farmctl import Farm, raw_call, start_farm
from fs_farmside import owner_of, volume_on
from fs_model import VOLUMES, Host, comparable_stat, fs_tree, host_tree, ops, outcome, seed
from kernelfarm.partition import key_slot

MODES = {"partitioned": ("--mode", "partitioned"),
         "locked": ("--mode", "locked", "--threads", "2")}


@pytest.fixture(scope="module")
def partitioned_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with start_farm(tmp_path_factory.mktemp("fsfarm"), 2, *MODES["partitioned"]) as farm:
        yield farm


@pytest.fixture(scope="module")
def locked_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with start_farm(tmp_path_factory.mktemp("fslocked"), 1, *MODES["locked"]) as farm:
        yield farm


@pytest.fixture(scope="module", params=list(MODES))
def farm(request: pytest.FixtureRequest) -> Farm:
    return request.getfixturevalue(f"{request.param}_farm")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def client(farm: Farm) -> kernelfarm.Client:
    return farm.client()  # closed with its farm


def spread_volumes(cluster_map: dict[str, Any]) -> dict[str, str]:
    """Fresh names for the model's two volumes: the first on the first kernel, the second
    on the last (different kernels whenever the farm has more than one)."""
    kernels = [k["id"] for k in cluster_map["kernels"]]
    first, second = VOLUMES
    return {first: volume_on(cluster_map, kernels[0], first),
            second: volume_on(cluster_map, kernels[-1], second)}


class Renamed:
    """Rewrites the model's paths (volumes ``v``, ``w``) onto this example's volumes."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def path(self, path: str) -> str:
        if path == "/":
            return path
        volume, sep, rest = path[1:].partition("/")
        return f"/{self.names[volume]}{sep}{rest}"

    def op(self, op: str, *args: Any) -> tuple[Any, ...]:
        if op == "rename":
            return op, self.path(args[0]), self.path(args[1])
        return op, self.path(args[0]), *args[1:]


def farm_side(client: kernelfarm.Client, ours: set[str], op: str, *args: Any) -> Any:
    result = getattr(client.fs, op)(*args)
    if op == "stat":
        return comparable_stat(result)
    if op == "listdir" and args[0] == "/":
        # The module's farm holds other tests' volumes too; "/" must still list ours,
        # wherever they live, merged from every kernel.
        return [name for name in result if name in ours]
    return result


# -- 1. the differential test through the farm -------------------------------------------

@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sequence=st.lists(ops, min_size=8, max_size=40), second_volume=st.booleans())
def test_fs_through_the_farm_matches_a_real_directory(
        farm: Farm, client: kernelfarm.Client, sequence: list[tuple[Any, ...]],
        second_volume: bool) -> None:
    cmap = farm.cluster_map()
    renamed = Renamed(spread_volumes(cmap))
    ours = set(renamed.names.values())
    assert len({owner_of(cmap, name)["id"] for name in ours}) == len(cmap["kernels"])
    with tempfile.TemporaryDirectory() as host_root:
        host = Host(host_root)
        for step in seed(second_volume) + sequence:
            op, *args = renamed.op(*step)
            expected = outcome(host.run, op, *args)
            got = outcome(farm_side, client, ours, op, *args)
            assert got == expected, (op, args)
        volumes = farm_side(client, ours, "listdir", "/")
        assert volumes == host.listdir("/")
        assert fs_tree(client.call, volumes) == host_tree(host_root)


# -- 2. "/" and routing -------------------------------------------------------------------

def test_listing_root_merges_the_volumes_of_every_kernel(farm: Farm,
                                                         client: kernelfarm.Client) -> None:
    cmap = farm.cluster_map()
    made = {k["id"]: [volume_on(cmap, k["id"], "root") for _ in range(3)]
            for k in cmap["kernels"]}
    for names in made.values():
        for name in names:
            client.fs.mkdir(f"/{name}")
    listing = client.fs.listdir("/")
    assert listing == sorted(listing)
    everything = {name for names in made.values() for name in names}
    assert everything <= set(listing)
    for kernel in cmap["kernels"]:
        # Each kernel alone lists only the volumes of its own slots.
        alone = set(raw_call(tuple(kernel["addr"]), "fs.listdir", "/"))
        assert alone & everything == set(made[kernel["id"]])
    assert client.fs.stat("/")["type"] == "dir"


def test_a_kernel_that_does_not_own_the_volume_answers_moved(
        partitioned_farm: Farm) -> None:
    farm = partitioned_farm
    cmap = farm.cluster_map()
    owner = cmap["kernels"][1]
    other = cmap["kernels"][0]
    volume = volume_on(cmap, owner["id"], "moved")
    client = farm.client()
    client.fs.mkdir(f"/{volume}")

    with pytest.raises(RuntimeError) as refused:
        raw_call(tuple(other["addr"]), "fs.stat", f"/{volume}")
    error = refused.value.args[0]
    assert error["code"] == "MOVED"
    assert error["slot"] == key_slot(volume)
    assert error["kernel"] == owner["id"]
    assert list(error["addr"]) == list(owner["addr"])
    assert error["epoch"] == cmap["epoch"]
    # Nothing of the volume leaked to the kernel that refused it.
    assert volume not in raw_call(tuple(other["addr"]), "fs.listdir", "/")
    assert raw_call(tuple(owner["addr"]), "fs.stat", f"/{volume}")["type"] == "dir"


def test_the_client_follows_moved_without_the_caller_noticing(
        partitioned_farm: Farm) -> None:
    farm = partitioned_farm
    cmap = farm.cluster_map()
    owner = cmap["kernels"][1]
    volume = volume_on(cmap, owner["id"], "stale")
    client = farm.client()
    client.fs.mkdir(f"/{volume}")
    # Hand the client a table of the same epoch with every slot on the wrong kernel.
    swapped = [[first, last, 1 - kid] for first, last, kid in cmap["slots"]]
    client.router.update({**cmap, "slots": swapped})
    slot = key_slot(volume)
    assert client.router.table.owner(slot) != owner["id"]

    client.fs.write_file(f"/{volume}/f", b"routed")
    assert client.fs.read_file(f"/{volume}/f") == b"routed"
    # Only the MOVED answer can have taught it the real owner.
    assert client.router.table.owner(slot) == owner["id"]


# -- 3. the asyncio client ------------------------------------------------------------------

@pytest.mark.asyncio
async def test_asyncio_client_write_read_round_trip(farm: Farm) -> None:
    cmap = farm.cluster_map()
    kernels = [k["id"] for k in cmap["kernels"]]
    names = [volume_on(cmap, kernels[0], "aio"), volume_on(cmap, kernels[-1], "aio")]
    async with kernelfarm.aio.Client(farm.control) as client:
        for name in names:
            await client.fs.mkdir(f"/{name}")
            await client.fs.write_file(f"/{name}/hello", b"over asyncio " + name.encode())
            assert await client.fs.pwrite(f"/{name}/hello", 20, b"!") == 1
        for name in names:
            expected = (b"over asyncio " + name.encode()).ljust(20, b"\0") + b"!"
            assert await client.fs.read_file(f"/{name}/hello") == expected
            assert (await client.fs.stat(f"/{name}/hello"))["size"] == 21
        assert set(names) <= set(await client.fs.listdir("/"))
        with pytest.raises(FileNotFoundError):
            await client.fs.read_file(f"/{names[0]}/missing")
        with pytest.raises(OSError) as crossing:
            await client.fs.rename(f"/{names[0]}/hello", f"/{names[-1]}/moved")
        assert crossing.value.errno == errno.EXDEV
