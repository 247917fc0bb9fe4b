"""The lock provider: real locks in the locked baseline, no lock code in a unicpu kernel."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import psutil
import pytest

from farmctl import start_farm
from kernelfarm.kernel.locks import LockProvider
from kernelfarm.kernel.subsystem import Method


def key_of(params: list) -> str | None:
    return params[0]


def test_global_locking_holds_one_lock_for_every_key() -> None:
    provider = LockProvider("global")
    seen = []
    method = provider.wrap(Method("t.op", lambda key: seen.append(provider.table_lock.locked()),
                                  key_of))
    method.handler("a")
    method.handler("b")
    assert seen == [True, True]
    assert provider.lock_for("a") is provider.lock_for("b") is provider.table_lock


def test_fine_locking_holds_the_key_lock_only() -> None:
    provider = LockProvider("fine")
    seen = []

    def handler(key: str) -> None:
        seen.append((key, provider.lock_for(key).locked(), provider.table_lock.locked(),
                     provider.lock_for("other" if key != "other" else "x").locked()))

    method = provider.wrap(Method("t.op", handler, key_of))
    method.handler("alice")
    assert seen == [("alice", True, False, False)]
    assert provider.lock_for("alice") is provider.lock_for("alice")
    assert provider.lock_for("alice") is not provider.lock_for("bob")


def test_connection_argument_does_not_confuse_the_key() -> None:
    provider = LockProvider("fine")
    seen = []
    method = provider.wrap(Method("t.op", lambda conn, key: seen.append(
        provider.lock_for(key).locked()), key_of, wants_conn=True))
    method.handler(object(), "alice")
    assert seen == [True]


@pytest.mark.asyncio
async def test_a_waiting_handler_releases_its_lock_while_it_waits() -> None:
    provider = LockProvider("fine")
    gate = asyncio.Event()
    states = []

    async def handler(key: str) -> str:
        states.append(provider.lock_for(key).locked())
        await gate.wait()
        states.append(provider.lock_for(key).locked())
        return "done"

    method = provider.wrap(Method("t.wait", handler, key_of, is_async=True))
    task = asyncio.ensure_future(method.handler("alice"))
    while not states:
        await asyncio.sleep(0)
    # Suspended: another thread can take the lock now.
    grabbed = threading.Event()
    thread = threading.Thread(target=lambda: provider.lock_for("alice").acquire(timeout=5)
                              and (grabbed.set(), provider.lock_for("alice").release()))
    thread.start()
    thread.join()
    assert grabbed.is_set()
    gate.set()
    assert await task == "done"
    assert states == [True, True]


def test_everything_holds_every_lock() -> None:
    provider = LockProvider("fine")
    locks = [provider.lock_for(k) for k in ("a", "b", "c")]
    with provider.everything():
        assert provider.table_lock.locked() and all(lock.locked() for lock in locks)
    assert not provider.table_lock.locked() and not any(lock.locked() for lock in locks)


def test_locked_mode_is_one_kernel_with_the_threads_asked_for(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1, "--mode", "locked", "--threads", "2") as farm:
        cmap = farm.cluster_map()
        assert len(cmap["kernels"]) == 1 and cmap["slots"] == [[0, 16383, 0]]
        proc = psutil.Process(cmap["kernels"][0]["pid"])
        assert proc.num_threads() == 2
        assert len(proc.cpu_affinity()) == min(2, len(psutil.Process().cpu_affinity()))
        client = farm.client()
        assert client.status()["mode"] == "locked"


@pytest.mark.asyncio
async def test_unicpu_handlers_carry_no_lock_code_and_locked_ones_do(tmp_path: Path) -> None:
    from kernelfarm import config as configuration
    from kernelfarm.boot import BootInfo
    from kernelfarm.kernel.process import make_kernel

    loop = asyncio.get_running_loop()
    config = configuration.load()
    kernels = {}
    for mode in ("partitioned", "locked"):
        boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, 16383, 0]],
                        addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                        data_dir=str(tmp_path / mode), supervisor_pid=0, mode=mode,
                        threads=2)
        kernels[mode] = make_kernel(boot, config, loop)
    subsystem_methods = [name for name in kernels["partitioned"].methods
                         if not name.startswith("kernel.")]
    assert subsystem_methods
    for name in subsystem_methods:
        unicpu = kernels["partitioned"].methods[name].handler
        locked = kernels["locked"].methods[name].handler
        assert unicpu.__module__ not in ("kernelfarm.kernel.locks", "kernelfarm.kernel.locked")
        assert locked.__module__ in ("kernelfarm.kernel.locks", "kernelfarm.kernel.locked")
    for kernel in kernels.values():
        kernel.close()
