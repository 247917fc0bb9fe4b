"""The lock provider: real locks in the locked baseline, no lock code in a unicpu kernel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from farmctl import start_farm
from kernelfarm.keys import volume_of
from kernelfarm.kernel.locks import LockProvider
from kernelfarm.kernel.subsystem import Method


def key_of(params: Sequence[Any]) -> str | None:
    key: str | None = params[0]
    return key


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


def test_fine_locking_remembers_a_first_parameters_lock_as_a_kernel_its_route() -> None:
    """The key function runs once per first parameter (as a unicpu kernel finds a route
    once per path); the lock found by the remembered parameter is always its key's."""
    provider = LockProvider("fine")
    keyed: list[str] = []
    held: list[tuple[str, bool, bool]] = []

    def volume(params: Sequence[Any]) -> str | None:
        keyed.append(params[0])
        return volume_of(params[0])

    def handler(path: str) -> None:
        held.append((path, provider.lock_for("alice").locked(), provider.table_lock.locked()))

    method = provider.wrap(Method("fs.op", handler, volume))
    long_path = "/alice/" + "x" * 200
    for path in ("/alice/a", "/alice/a", "/alice/b", "/", "/", long_path, long_path):
        method.handler(path)
    assert keyed == ["/alice/a", "/alice/b", "/", long_path, long_path]  # long: not kept
    assert held == [("/alice/a", True, False), ("/alice/a", True, False),
                    ("/alice/b", True, False), ("/", False, True), ("/", False, True),
                    (long_path, True, False), (long_path, True, False)]


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
    def grab() -> None:
        if provider.lock_for("alice").acquire(timeout=5):
            grabbed.set()
            provider.lock_for("alice").release()

    thread = threading.Thread(target=grab)
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


class CountingLock:
    """A ``threading.Lock`` that counts its acquisitions (all of them, in ``taken``)."""

    taken = 0

    def __init__(self) -> None:
        self._lock = _REAL_LOCK()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        CountingLock.taken += 1
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


_REAL_LOCK = threading.Lock


class Sink:
    """A client connection that takes replies and close callbacks."""

    inflight = 0
    session: object = None

    def write(self, data: bytes) -> None:
        pass

    def on_close(self, callback: object) -> None:
        pass


@pytest.mark.asyncio
async def test_the_unicpu_path_takes_no_lock_and_the_locked_one_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted at run time: every lock made while the kernels are built and serve counts
    its acquisitions; the same fs requests take none in a unicpu kernel."""
    from kernelfarm import config as configuration
    from kernelfarm.boot import BootInfo
    from kernelfarm.kernel.process import make_kernel

    monkeypatch.setattr(threading, "Lock", CountingLock)
    monkeypatch.setattr(threading, "RLock", CountingLock)
    loop = asyncio.get_running_loop()
    config = configuration.load()
    requests: list[tuple[str, list[Any]]] = [
        ("fs.mkdir", ["/v", 0o755]), ("fs.write_file", ["/v/f", b"data"]),
        ("fs.stat", ["/v/f"]), ("fs.read_file", ["/v/f"]), ("fs.listdir", ["/v"]),
        ("fs.unlink", ["/v/f"]), ("kernel.ping", [])]
    taken = {}
    for mode in ("partitioned", "locked"):
        boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, 16383, 0]],
                        addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                        data_dir=str(tmp_path / mode), supervisor_pid=0, mode=mode,
                        threads=2)
        kernel = make_kernel(boot, config, loop)
        CountingLock.taken = 0
        sink = Sink()
        sink.session = kernel.gate.trusted  # the supervisor's channel: no hello, every key
        for msgid, (method, params) in enumerate(requests):
            reply = kernel.handle(sink, msgid, method, params)
            assert reply is not None and reply[2] is None, reply
            await asyncio.sleep(0)  # the turn ends: its group commit runs
        taken[mode] = CountingLock.taken
        kernel.close()
    assert taken["partitioned"] == 0
    assert taken["locked"] >= len(requests) - 1  # every fs request took its lock


@pytest.mark.asyncio
async def test_one_locked_thread_is_the_unicpu_kernel_plus_the_lock_wrapper(
        tmp_path: Path) -> None:
    """``unicpu-locks`` differs from a partitioned kernel by the wrapped handlers alone."""
    from kernelfarm import config as configuration
    from kernelfarm.boot import BootInfo
    from kernelfarm.kernel.kernel import Kernel
    from kernelfarm.kernel.process import make_kernel

    loop = asyncio.get_running_loop()
    config = configuration.load()
    kernels = {}
    for mode in ("partitioned", "locked"):
        boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, 16383, 0]],
                        addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                        data_dir=str(tmp_path / mode), supervisor_pid=0, mode=mode,
                        threads=1)
        kernels[mode] = make_kernel(boot, config, loop)
    assert type(kernels["locked"]) is Kernel is type(kernels["partitioned"])
    for name, method in kernels["partitioned"].methods.items():
        locked = kernels["locked"].methods[name]
        if name.startswith("kernel."):
            continue
        assert locked.handler.__module__ == "kernelfarm.kernel.locks"
        assert (locked.key, locked.is_async, locked.writes, locked.wants_conn) == \
            (method.key, method.is_async, method.writes, method.wants_conn)
    for kernel in kernels.values():
        kernel.close()
