"""The fs fast path: encoded stat results kept per volume stay right and bounded, a stat
of a missing path is answered without an exception, and journal records (encoded with
msgspec) are the msgpack the journal reader takes."""

from __future__ import annotations

import asyncio
import errno
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fs_harness import FakeKernel, wire

from kernelfarm import config as configuration
from kernelfarm.boot import BootInfo
from kernelfarm.errors import posix, to_wire
from kernelfarm.fs import subsystem
from kernelfarm.fs.journal import HEADER
from kernelfarm.fs.paths import KEPT_PATH_CHARS, parse
from kernelfarm.fs.tree import stat_of
from kernelfarm.fs.volume import WRITE_FILE
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.partition import NSLOTS, key_slot


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[FakeKernel]:
    kernel = FakeKernel(tmp_path / "data")
    kernel.api.mkdir("/v")
    yield kernel
    kernel.close()


def computed(kernel: FakeKernel, path: str) -> Any:
    """The stat map built afresh from the tree, as it was before any result was kept."""
    name, comps = parse(path)
    assert name is not None
    return wire(stat_of(kernel.fs.volumes[name].tree.lookup(comps)))


def test_a_kept_stat_is_dropped_by_every_change_of_its_volume(kernel: FakeKernel) -> None:
    fs = kernel.api
    fs.mkdir("/v/d")
    fs.write_file("/v/d/f", b"one")
    changes: list[tuple[str, tuple[Any, ...]]] = [
        ("write_file", ("/v/d/f", b"longer")), ("pwrite", ("/v/d/f", 10, b"x")),
        ("truncate", ("/v/d/f", 2)), ("chmod", ("/v/d/f", 0o600)), ("utime", ("/v/d/f", 5)),
        ("symlink", ("/v/d/l", "f")), ("mkdir", ("/v/d/e",)), ("rename", ("/v/d/f", "/v/g")),
        ("rmdir", ("/v/d/e",)), ("unlink", ("/v/d/l",)), ("write_file", ("/v/d/f", b"")),
    ]
    paths = ["/v", "/v/d", "/v/d/f", "/v/g", "/v/d/l", "/v/d/e"]
    for method, args in changes:
        kept = {p: fs.stat(p) for p in paths if kernel.errno_of("fs.stat", p) is None}
        assert kernel.fs.volumes["v"].stats  # the results above are kept...
        getattr(fs, method)(*args)
        for path in paths:  # ...and none outlives the change
            if kernel.errno_of("fs.stat", path) is None:
                assert fs.stat(path) == computed(kernel, path), (method, path)
        assert any(fs.stat(p) != was for p, was in kept.items()
                   if kernel.errno_of("fs.stat", p) is None) or method == "unlink"


def test_kept_stats_and_paths_are_bounded(kernel: FakeKernel,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subsystem, "STATS_KEPT", 4)
    monkeypatch.setattr(subsystem, "RESOLVED_KEPT", 4)
    for index in range(10):
        kernel.api.write_file(f"/v/f{index}", b"x" * index)
    for index in range(10):
        assert kernel.api.stat(f"/v/f{index}")["size"] == index
        assert len(kernel.fs.volumes["v"].stats) <= 4
        assert kernel.fs._stats == kernel.fs.volumes["v"].stats  # the same results
        assert 0 < len(kernel.fs._resolved) <= 4
    # A long path is served, and neither it nor its stat is kept (bounded in bytes too).
    directory = "/v/" + "d" * 200
    long = directory + "/" + "f" * (KEPT_PATH_CHARS - 200)
    kernel.api.mkdir(directory)
    kernel.api.write_file(long, b"long")
    assert kernel.api.stat(long)["size"] == 4
    assert kernel.api.read_file(long) == b"long"
    assert long not in kernel.fs._resolved
    assert long not in kernel.fs.volumes["v"].stats and long not in kernel.fs._stats


def test_a_kept_path_never_finds_a_volume_that_is_gone(kernel: FakeKernel) -> None:
    # Every fs call keeps the volume it resolved a path to (FsSubsystem._resolved); a
    # volume removed and made again is another volume, and the kept path must find it
    # (kept, it would write into the removed one, and read what that one held).
    fs = kernel.api
    fs.write_file("/v/f", b"old")
    assert fs.stat("/v/f")["size"] == 3
    assert fs.read_file("/v/f") == b"old"
    fs.unlink("/v/f")
    fs.rmdir("/v")
    assert kernel.errno_of("fs.stat", "/v/f") == errno.ENOENT
    fs.mkdir("/v")
    fs.write_file("/v/f", b"newer")
    assert fs.stat("/v/f")["size"] == 5
    assert fs.read_file("/v/f") == b"newer"
    kernel.restart()  # and it was journaled in the volume that is there
    assert kernel.api.read_file("/v/f") == b"newer"


def test_a_kept_stat_is_answered_only_while_its_volume_is_served_unchanged(
        kernel: FakeKernel, tmp_path: Path) -> None:
    # A kept stat is served from one kernel-wide table (FsSubsystem._stats), without
    # resolving the path: a volume drops its results from there when it changes (above),
    # when it fails, and when it leaves -- or a slot that moved away and back would
    # answer what the volume was before another kernel changed it.
    fs = kernel.api
    fs.mkdir("/w")
    fs.write_file("/v/f", b"old")
    fs.write_file("/w/f", b"w")
    assert fs.stat("/v/f")["size"] == 3 and fs.stat("/w/f")["size"] == 1
    fs.write_file("/w/g", b"")  # another volume's change keeps this one's results
    assert "/v/f" in kernel.fs._stats and "/w/f" not in kernel.fs._stats
    slot = key_slot("v")
    kernel.fs.release_slot(slot)  # given away: made durable, dropped
    other = FakeKernel(tmp_path / "data", slots={slot})  # its next owner changes it
    other.api.write_file("/v/f", b"newer")
    other.close()
    kernel.fs.load_slots([slot])  # and it comes back
    assert fs.stat("/v/f")["size"] == 5
    kernel.fs.volumes["v"].fail("a flush failed (test)")
    assert kernel.errno_of("fs.stat", "/v/f") == errno.EIO
    assert fs.stat("/w/f")["size"] == 1


@pytest.mark.asyncio
async def test_a_stat_of_a_missing_path_is_answered_without_an_exception(
        tmp_path: Path) -> None:
    config = configuration.load()
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                    addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                    data_dir=str(tmp_path), supervisor_pid=0)

    class Watched(Kernel):  # a subclass, not a patched instance: Kernel may be compiled
        def failure(self, method: str, params: Sequence[Any], exc: BaseException
                    ) -> dict[str, Any]:
            raise AssertionError("the miss went through an exception")

    kernel = Watched(boot, config, asyncio.get_running_loop())
    conn = type("Trusted", (), {"session": kernel.gate.trusted})()
    try:
        deep = "/v/" + "/".join(["d" * 200] * 3)  # a long path: the message is cut
        for path in ("/v", "/v/" + "d" * 200, "/v/" + "/".join(["d" * 200] * 2), deep):
            made = kernel.handle(conn, 1, "fs.mkdir", [path])
            assert made is not None and made[2] is None
        for path in ("/v/missing", deep + "/missing"):
            reply = kernel.handle(conn, 2, "fs.stat", [path])
            assert reply == [1, 2, to_wire(posix(errno.ENOENT, path)), None]
        assert kernel.errors == {"ENOENT": 2}
    finally:
        kernel.close()


def test_a_change_is_journaled_as_msgpack_and_a_refused_one_not_at_all(
        kernel: FakeKernel) -> None:
    kernel.api.mkdir("/v/d")
    volume = kernel.fs.volumes["v"]
    journaled = volume.journal.size + volume.journal.pending
    for refused in (("write_file", "/v/d", b"x"), ("unlink", "/v/d"), ("rmdir", "/v/none")):
        assert kernel.errno_of(f"fs.{refused[0]}", *refused[1:]) is not None
        # no record of what did not happen, buffered or written
        assert volume.journal.size + volume.journal.pending == journaled, refused
    kernel.api.write_file("/v/d/f", b"\x00data")
    node = volume.tree.lookup(("d", "f"))
    record = (WRITE_FILE, ("d", "f"), b"\x00data", node.ino, node.mtime_ns)
    with open(volume.journal.path, "rb") as fh:
        content = fh.read()
    payload = msgpack.packb(record)
    seed = int.from_bytes(content[12:16], "little")  # the file header's CRC seeds records
    framed = HEADER.pack(len(payload), zlib.crc32(payload, seed)) + payload
    assert content[journaled:journaled + len(framed)] == framed
    assert content[journaled + len(framed):].count(0) == len(content) - journaled - len(framed)
