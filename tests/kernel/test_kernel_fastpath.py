"""The kernel's request path: what it remembers between requests stays right and bounded."""

from __future__ import annotations

import asyncio
from binascii import crc_hqx
from pathlib import Path
from typing import Any

import pytest

from kernelfarm import config as configuration
from kernelfarm.auth.gate import Grants, Session
from kernelfarm.boot import BootInfo
from kernelfarm.kernel import kernel as kernel_module
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.partition import NSLOTS


def slot(key: str) -> int:
    return crc_hqx(key.encode("utf-8"), 0) % NSLOTS


def make(tmp_path: Path, ranges: list[list[int]]) -> Kernel:
    config = configuration.load()
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=ranges,
                    addrs={0: ["127.0.0.1", 1], 1: ["127.0.0.1", 2]},
                    config=config.to_dict(), data_dir=str(tmp_path), supervisor_pid=0)
    return Kernel(boot, config, asyncio.get_running_loop())


class Trusted:
    """A connection that needs no hello, as the supervisor's channel: every method and key."""

    def __init__(self, kernel: Kernel) -> None:
        self.session = kernel.gate.trusted


def call(kernel: Kernel, method: str, *params: Any) -> Any:
    return kernel.handle(Trusted(kernel), 7, method, list(params))


@pytest.mark.asyncio
async def test_remembered_slots_follow_ownership_and_stay_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_module, "SLOTS_REMEMBERED", 8)
    mine, theirs = "alice", next(f"v{i}" for i in range(1000) if slot(f"v{i}") != slot("alice"))
    ranges = [[s, s, 0 if s == slot(mine) else 1] for s in range(NSLOTS)]
    kernel = make(tmp_path, ranges)
    kernel.load_slots([slot(mine)])
    assert call(kernel, "fs.stat", f"/{theirs}")[2]["code"] == "MOVED"
    assert call(kernel, "fs.stat", f"/{mine}")[2]["code"] == "ENOENT"
    for index in range(50):  # many keys: the memory starts afresh instead of growing
        call(kernel, "fs.stat", f"/k{index}/f")
    assert len(kernel._slot_of) <= 8
    assert call(kernel, "fs.stat", f"/{theirs}")[2]["code"] == "MOVED"
    kernel.close()


@pytest.mark.asyncio
async def test_remembered_routes_are_per_key_function_and_stay_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's route is kept by its first parameter; the same string read by another
    key function (a path that is also a namespace name) is routed by that function."""
    monkeypatch.setattr(kernel_module, "ROUTES_REMEMBERED", 8)
    mine = next(f"v{i}" for i in range(1000) if slot(f"v{i}") != slot(f"/v{i}"))
    ranges = [[s, s, 0 if s == slot(mine) else 1] for s in range(NSLOTS)]
    kernel = make(tmp_path, ranges)
    kernel.load_slots([slot(mine)])
    first = f"/{mine}"  # fs: volume `mine`, ours; net: namespace `/mine`, not ours
    assert call(kernel, "fs.stat", first)[2]["code"] == "ENOENT"
    assert first in kernel.methods["fs.stat"].routes
    assert first not in kernel.methods["net.stats"].routes
    assert call(kernel, "net.stats", first)[2]["code"] == "MOVED"
    assert call(kernel, "fs.stat", first)[2]["code"] == "ENOENT"
    for index in range(50):  # many paths: the memory starts afresh instead of growing
        call(kernel, "fs.stat", f"/{mine}/f{index}")
    long = f"/{mine}/" + "x" * kernel_module.REMEMBERED_KEY_CHARS
    assert call(kernel, "fs.stat", long)[2]["code"] == "ENOENT"
    routes = kernel.methods["fs.stat"].routes
    assert len(routes) <= 8 and long not in routes
    kernel.close()


@pytest.mark.asyncio
async def test_remembered_routes_are_forgotten_when_a_slot_moves(tmp_path: Path) -> None:
    """A kept route skips the ownership checks, so freezing or releasing a slot must
    forget it: a write to a moving slot gets TRYAGAIN, a read is still served, and a
    released slot's requests are redirected, however often they were served before."""
    mine = "alice"
    kernel = make(tmp_path, [[0, NSLOTS - 1, 0]])
    kernel.load_slots([slot(mine)])
    assert call(kernel, "fs.mkdir", f"/{mine}")[2] is None
    for _ in range(2):  # the second time from the kept route
        assert call(kernel, "fs.write_file", f"/{mine}/f", b"x")[2] is None
        assert call(kernel, "fs.stat", f"/{mine}/f")[2] is None
    kernel.freeze([slot(mine)])
    assert call(kernel, "fs.write_file", f"/{mine}/f", b"y")[2]["code"] == "TRYAGAIN"
    assert call(kernel, "fs.stat", f"/{mine}/f")[2] is None
    kernel.thaw([slot(mine)])
    assert call(kernel, "fs.write_file", f"/{mine}/f", b"z")[2] is None
    assert call(kernel, "fs.stat", f"/{mine}/f")[2] is None
    kernel.release([slot(mine)])
    assert call(kernel, "fs.stat", f"/{mine}/f")[2]["code"] == "TRYAGAIN"
    kernel.close()


class Tenant:
    """A connection of a tenant granted only the volumes named ``granted``."""

    def __init__(self, kernel: Kernel, granted: str) -> None:
        self.session = Session(tenant="t", admin=False, methods=kernel.methods,
                               grants=Grants((granted,), ()))


@pytest.mark.asyncio
async def test_a_kept_result_is_answered_as_its_handler_would(tmp_path: Path) -> None:
    """A stat the fs subsystem keeps is answered by the kernel without its handler, so
    the kernel must check what the handler would have: the route (a tenant not granted
    the volume is refused), the parameter count (EINVAL, not the stat), an unhashable
    parameter (EINVAL, not a crash); and it counts the request."""
    kernel = make(tmp_path, [[0, NSLOTS - 1, 0]])
    kernel.load_slots([slot("v")])
    assert call(kernel, "fs.mkdir", "/v")[2] is None
    assert call(kernel, "fs.write_file", "/v/f", b"x")[2] is None
    stat = call(kernel, "fs.stat", "/v/f")
    kept = kernel.methods["fs.stat"].kept
    assert stat[2] is None and kept is not None and "/v/f" in kept
    served = kernel.ops["fs.stat"]
    assert call(kernel, "fs.stat", "/v/f") == stat  # the kept one
    assert kernel.ops["fs.stat"] == served + 1
    assert kernel.handle(Tenant(kernel, "v"), 7, "fs.stat", ["/v/f"]) == stat
    denied = kernel.handle(Tenant(kernel, "w"), 7, "fs.stat", ["/v/f"])
    assert denied is not None and denied[2]["code"] == "EACCES"
    too_many = call(kernel, "fs.stat", "/v/f", "extra")[2]
    assert too_many["code"] == "EINVAL" and "takes 1 parameter" in too_many["message"]
    assert call(kernel, "fs.stat", ["/v/f"])[2]["code"] == "EINVAL"
    kernel.close()


@pytest.mark.asyncio
async def test_a_tenant_sees_only_its_own_volumes_at_the_root(tmp_path: Path) -> None:
    """``fs.listdir("/")`` and ``fs.statfs("/")`` of a tenant name and add up only the
    volumes it is granted, not its kernel's others; the admin sees them all."""
    kernel = make(tmp_path, [[0, NSLOTS - 1, 0]])
    kernel.load_slots(list(range(NSLOTS)))
    for volume, data in (("v", b"vv"), ("w", b"w" * 1000)):
        assert call(kernel, "fs.mkdir", f"/{volume}")[2] is None
        assert call(kernel, "fs.write_file", f"/{volume}/f", data)[2] is None
    tenant = Tenant(kernel, "v")
    assert kernel.handle(tenant, 7, "fs.listdir", ["/"]) == [1, 7, None, ["v"]]
    mine = call(kernel, "fs.statfs", "/v")[3]
    scoped = kernel.handle(tenant, 7, "fs.statfs", ["/"])
    assert scoped is not None and scoped[3] == {**mine, "volumes": 1}
    everything = call(kernel, "fs.statfs", "/")[3]
    assert everything["volumes"] == 2 and everything["bytes_used"] > mine["bytes_used"]
    too_many = kernel.handle(tenant, 7, "fs.statfs", ["/", 1])
    assert too_many is not None and too_many[2]["code"] == "EINVAL"
    kernel.close()
