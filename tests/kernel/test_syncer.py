"""The syncer child of a unicpu kernel: made at boot, gone with its kernel, and a kernel
whose syncer dies stops loudly instead of acknowledging what nobody synced."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from farmctl import Farm, gone, start_farm, wait_until
from kernelfarm import config as configuration
from kernelfarm.boot import EXIT_FLUSH_FAILED, BootInfo
from kernelfarm.kernel import syncer
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.partition import NSLOTS


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


def signal_taken(pid: int) -> bool:
    """Whether ``pid`` has no signal pending any more (handled, ignored or died of it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    pending = [line.split()[1] for line in status.splitlines()
               if line.startswith(("SigPnd:", "ShdPnd:"))]
    return all(int(mask, 16) == 0 for mask in pending) or "(zombie)" in status


def test_a_sigterm_to_the_whole_group_leaves_the_syncer_to_its_kernel(tmp_path: Path) -> None:
    """SIGTERM to every process of the farm (``kill -TERM -PGID``, a container's stop)
    must not end a syncer before its kernel: the kernel would take it for a failed
    fsync and exit unacknowledged at what is a clean stop."""
    with start_farm(tmp_path, 1) as farm:
        client = farm.client()
        client.fs.mkdir("/v")
        kernel = only_kernel(farm)
        child = syncer_of(kernel)
        os.kill(child.pid, signal.SIGTERM)
        wait_until(lambda: signal_taken(child.pid), what="the syncer to take the SIGTERM")
        client.fs.write_file("/v/f", b"synced by the same syncer")  # fsync "always"
        assert only_kernel(farm).pid == kernel.pid
        assert syncer_of(kernel).pid == child.pid
        assert "flush failed" not in farm.log()


def test_the_syncer_never_answers_a_request_with_a_sync_begun_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's rule, with a disk that holds the first fdatasync: a request that comes
    while a sync runs is not answered by it, but by a sync of its own begun after."""
    calls: list[int] = []
    in_sync, go = threading.Event(), threading.Event()

    def slow_fdatasync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            in_sync.set()
            assert go.wait(30)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)  # the module syncer calls
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = threading.Thread(target=syncer._serve, args=(theirs,))  # the child's loop
    child.start()
    first = os.open(tmp_path / "first", os.O_WRONLY | os.O_CREAT, 0o600)
    second = os.open(tmp_path / "second", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        socket.send_fds(ours, [syncer.REQUEST.pack(1)], [first])
        assert in_sync.wait(30)
        socket.send_fds(ours, [syncer.REQUEST.pack(1)], [second])  # during that sync
        go.set()
        assert ours.recv(64) == syncer.ANSWER.pack(0)  # the first alone
        assert ours.recv(64) == syncer.ANSWER.pack(0)  # the second, after its own sync
        assert len(calls) == 2
    finally:
        go.set()
        ours.close()  # EOF: the child's loop ends
        child.join(30)
        theirs.close()
        os.close(first)
        os.close(second)


# -- in one process: which fdatasyncs the loop still makes -----------------------------------

class Trusted:
    """A connection that needs no hello: every method and key."""

    def __init__(self, kernel: Kernel) -> None:
        self.session = kernel.gate.trusted


@pytest.fixture
def syncing_kernel(tmp_path: Path) -> Iterator[Any]:
    """``make(**fs_settings)``: a unicpu kernel in this process with a syncer child (forked
    first, as at boot), and a list of the ``fdatasync`` calls made on its loop."""
    made: list[Kernel] = []

    def make(**fs_settings: Any) -> tuple[Kernel, list[int]]:
        child = syncer.Syncer.fork()
        loop = asyncio.get_running_loop()
        config = configuration.build({"fs": fs_settings})
        boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                        addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                        data_dir=str(tmp_path), supervisor_pid=0)
        kernel = Kernel(boot, config, loop)
        kernel.group_commit.sync_behind(child, loop)
        made.append(kernel)
        on_loop: list[int] = []
        real = os.fdatasync

        def counted(fd: int) -> None:
            on_loop.append(fd)
            real(fd)

        patch.setattr(os, "fdatasync", counted)
        return kernel, on_loop

    with pytest.MonkeyPatch.context() as patch:
        yield make
        for kernel in made:
            kernel.close()


async def until(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.001)


async def settled(kernel: Kernel) -> None:
    """Until the group commit has nothing pending and holds no reply."""
    commits = kernel.group_commit
    await until(lambda: not (commits.pending or commits.holding), "the syncer's answer")


@pytest.mark.asyncio
async def test_the_batch_policys_fdatasync_runs_in_the_syncer(syncing_kernel: Any) -> None:
    """``fsync = "batch"``: the timer's sync is a group commit of its own, made behind the
    loop by the syncer; the loop itself calls no ``fdatasync``."""
    kernel, on_loop = syncing_kernel(fsync="batch", batch_interval_ms=1)
    conn = Trusted(kernel)
    kernel.handle(conn, 1, "fs.mkdir", ["/v"])
    for n in range(3):
        assert kernel.handle(conn, 2, "fs.write_file", [f"/v/f{n}", b"x"]) == [1, 2, None, None]
        await settled(kernel)  # written and answered at once: the policy syncs later
    deadline = asyncio.get_running_loop().time() + 30
    while kernel.group_commit.stats()["syncs_behind"] == 0 and not on_loop:
        assert asyncio.get_running_loop().time() < deadline, "the batch was never synced"
        await asyncio.sleep(0.001)
    await settled(kernel)
    assert on_loop == []


@pytest.mark.asyncio
async def test_a_journal_closed_past_the_open_limit_is_not_synced_again(
        syncing_kernel: Any) -> None:
    """``open_journals = 1``, ``fsync = "always"``: each write of one volume closes the
    other's journal.  Its writes were handed to the syncer (which holds its own
    reference to the file) and their replies waited for it, so closing it asks no
    ``fdatasync`` of the loop."""
    kernel, on_loop = syncing_kernel(open_journals=1)
    conn = Trusted(kernel)
    for volume in ("a", "b"):
        kernel.handle(conn, 1, "fs.mkdir", [f"/{volume}"])
    for n in range(4):
        for volume in ("a", "b"):
            kernel.handle(conn, 2, "fs.write_file", [f"/{volume}/f{n}", b"x"])
            await settled(kernel)
    assert kernel.group_commit.stats()["syncs_behind"] >= 8
    assert on_loop == []


class Recorded(Trusted):
    """A trusted connection that records what is written to it (held replies too)."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


@pytest.mark.asyncio
async def test_no_reply_waits_for_the_batch_policys_timer_sync(syncing_kernel: Any) -> None:
    """``fsync = "batch"`` promises the write before the reply and durability within
    ``batch_interval_ms``: no reply depends on the timer's ``fdatasync``.  With the syncer
    stopped (SIGSTOP: that sync never ends), a write made while the timer's sync is in
    flight is answered as soon as its turn is written; an ``fs.fsync`` still waits for
    its own sync.  (Held, every reply met while the timer's sync ran waited up to an
    ``fdatasync``: the policy's p99.)"""
    kernel, _ = syncing_kernel(fsync="batch", batch_interval_ms=1)
    conn = Recorded(kernel)
    commits = kernel.group_commit
    kernel.handle(conn, 1, "fs.mkdir", ["/v"])
    await settled(kernel)
    (child,) = [p for p in psutil.Process().children() if p.name() == "kf-syncer"]
    os.kill(child.pid, signal.SIGSTOP)
    try:
        sent_before = commits.stats()["sync_behind_fds"]
        kernel.handle(conn, 2, "fs.write_file", ["/v/a", b"x"])
        kernel.send(conn, b"first")
        await until(lambda: commits.stats()["sync_behind_fds"] > sent_before,
                    "the timer's sync sent to the syncer")
        kernel.handle(conn, 3, "fs.write_file", ["/v/b", b"y"])
        kernel.send(conn, b"second")
        await until(lambda: not commits.pending, "the second write's commit")
        assert conn.sent == [b"first", b"second"]  # not held by the sync in flight
        kernel.handle(conn, 4, "fs.fsync", ["/v/b"])
        kernel.send(conn, b"fsynced")
        await until(lambda: not commits.pending, "the fsync's commit")
        assert conn.sent == [b"first", b"second"]  # waits for its own sync
    finally:
        os.kill(child.pid, signal.SIGCONT)
    await until(lambda: conn.sent == [b"first", b"second", b"fsynced"], "the fsync's reply")
