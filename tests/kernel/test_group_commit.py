"""One group commit for the unicpu kernel, each thread of the locked one, the in-process
bench and the harnesses: a turn's writes share a flush, and nothing they answer leaves
before it.  A failed flush is fatal in both kernels: they exit without replying."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from farmctl import gone
from kernelfarm.boot import EXIT_FLUSH_FAILED
from kernelfarm.kernel.commit import GroupCommit
from kernelfarm.kernel.syncer import Syncer


class Conn:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


def test_replies_wait_for_one_flush_per_turn() -> None:
    scheduled: list[object] = []
    flushed: list[str] = []
    commits = GroupCommit(scheduled.append)
    conn = Conn()
    commits.send(conn, b"before")  # nothing pending: straight out
    def flush() -> list[int]:  # one callable for two requests
        flushed.append("fsync")
        return []

    commits.request(flush)
    commits.request(flush)
    commits.send(conn, b"held")
    assert (conn.sent, flushed, len(scheduled)) == ([b"before"], [], 1)
    commits.commit()
    assert (conn.sent, flushed) == ([b"before", b"held"], ["fsync"])
    commits.commit_now()  # nothing pending: no second flush
    assert flushed == ["fsync"]


SCRIPT = """
import asyncio, sys
from kernelfarm import config as configuration
from kernelfarm.boot import BootInfo
from kernelfarm.kernel.process import make_kernel

class Conn:
    inflight = 0
    def write(self, data):
        print("replied", flush=True)
    def on_close(self, callback):
        pass

def boom():
    raise OSError(5, "fsync failed")

async def main(mode, when):
    config = configuration.load()
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, 16383, 0]],
                    addrs={{0: ["127.0.0.1", 1]}}, config=config.to_dict(),
                    data_dir={data_dir!r} + mode, supervisor_pid=0, mode=mode, threads=2)
    kernel = make_kernel(boot, config, asyncio.get_running_loop())
    conn = Conn()
    kernel.connection_made(conn)
    conn.session = kernel.gate.trusted  # as the supervisor's channel: no hello needed
    kernel.handle(conn, 1, "fs.mkdir", ["/v", 0o755])
    await asyncio.sleep(0.05)
    kernel.subsystems[0]._flush = boom
    kernel.handle(conn, 2, "fs.write_file", ["/v/f", b"data"])
    kernel.send(conn, b"reply")
    if when == "release":  # before the turn's own commit: release commits first
        try:
            kernel.release(list(range(16384)))
        except Exception:
            print("raised", flush=True)
    await asyncio.sleep(0.1)
    print("survived", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("mode", ["partitioned", "locked"])
@pytest.mark.parametrize("when", ["turn", "release"])
def test_a_failed_flush_exits_without_replying(tmp_path: Path, mode: str, when: str) -> None:
    script = textwrap.dedent(SCRIPT).format(data_dir=str(tmp_path / "data-"))
    done = subprocess.run([sys.executable, "-c", script, mode, when], capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (EXIT_FLUSH_FAILED, ""), done.stderr


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


@pytest.mark.asyncio
async def test_behind_each_groups_replies_wait_for_its_own_sync(tmp_path: Path) -> None:
    """Sync behind: each turn's group is written and sent to the syncer child at once,
    behind the groups still syncing; its replies leave only when the child has synced
    it, in order, and a reply made while groups sync waits for the last of them."""
    loop = asyncio.get_running_loop()
    commits = GroupCommit(loop.call_soon)
    syncer = Syncer.fork()
    commits.sync_behind(syncer, loop)
    fd = os.open(tmp_path / "journal", os.O_WRONLY | os.O_CREAT, 0o600)
    written: list[tuple[bytes, int]] = []  # each reply, and the groups synced by then

    class Counting(Conn):
        def write(self, data: bytes) -> None:
            written.append((data, syncer.syncs))

    def flush() -> list[int]:
        os.write(fd, b"record")
        return [fd]

    conn = Counting()
    try:
        commits.request(flush)
        commits.send(conn, b"first")
        await asyncio.sleep(0)  # the turn ends: its group is written and sent
        assert written == [] and syncer.busy
        commits.request(flush)
        commits.send(conn, b"second")
        commits.send(conn, b"read in its turn")
        await asyncio.sleep(0)  # sent behind the first, without waiting for it
        assert commits.count == 2 and b"second" not in [data for data, _ in written]
        commits.send(conn, b"read after it")  # no write since: waits for the last group
        await until(lambda: not syncer.busy, "both syncs")
        assert [data for data, _ in written] == [
            b"first", b"second", b"read in its turn", b"read after it"]
        synced_by_then = [synced for _, synced in written]
        assert [s >= g for s, g in zip(synced_by_then, [1, 2, 2, 2], strict=True)] == [True] * 4
        commits.send(conn, b"nothing pending")
        assert written[-1][0] == b"nothing pending"
        assert commits.stats()["syncs_behind"] == 2
    finally:
        commits.close()
        os.close(fd)
    assert gone(syncer.pid)
