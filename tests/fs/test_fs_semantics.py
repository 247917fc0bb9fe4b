"""POSIX behaviour the differential test does not reach: times, limits, symlinks, ``/``,
parameter types, and the volume-as-mount-point rules."""

from __future__ import annotations

import errno
import stat as statmod
from pathlib import Path
from typing import Any, Iterator

import pytest
from fs_harness import FakeKernel


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[FakeKernel]:
    kernel = FakeKernel(tmp_path / "data", max_file_bytes=1000, volume_quota_bytes=3000,
                        volume_max_inodes=20)
    kernel.api.mkdir("/v")
    yield kernel
    kernel.close()


def test_pread_past_the_end_is_short_and_pwrite_past_it_leaves_zeros(kernel: FakeKernel) -> None:
    fs = kernel.api
    fs.write_file("/v/f", b"abc")
    assert fs.pread("/v/f", 1, 100) == b"bc"
    assert fs.pread("/v/f", 50, 10) == b""
    assert fs.pwrite("/v/f", 6, b"xy") == 2
    assert fs.read_file("/v/f") == b"abc\0\0\0xy"
    fs.truncate("/v/f", 10)
    assert fs.read_file("/v/f") == b"abc\0\0\0xy\0\0"
    fs.truncate("/v/f", 2)
    assert fs.read_file("/v/f") == b"ab"


def test_a_huge_read_size_returns_only_what_the_file_holds(kernel: FakeKernel) -> None:
    kernel.api.write_file("/v/f", b"x" * 100)
    assert kernel.api.pread("/v/f", 10, 2**63 - 1) == b"x" * 90


def test_times_move_as_linux_moves_them(kernel: FakeKernel) -> None:
    fs = kernel.api
    fs.mkdir("/v/d")
    fs.write_file("/v/d/f", b"1")
    d0, f0 = fs.stat("/v/d"), fs.stat("/v/d/f")
    assert d0["mtime_ns"] == d0["ctime_ns"] == f0["mtime_ns"]  # create moved the parent

    fs.pwrite("/v/d/f", 0, b"2")  # data write: the file's mtime and ctime, not the parent's
    d1, f1 = fs.stat("/v/d"), fs.stat("/v/d/f")
    assert f1["mtime_ns"] > f0["mtime_ns"] and f1["ctime_ns"] == f1["mtime_ns"]
    assert d1 == d0

    fs.truncate("/v/d/f", 1)  # same size: nothing moves
    assert fs.stat("/v/d/f") == f1

    fs.chmod("/v/d/f", 0o600)  # chmod: ctime only
    f2 = fs.stat("/v/d/f")
    assert f2["mtime_ns"] == f1["mtime_ns"] and f2["ctime_ns"] > f1["ctime_ns"]
    assert f2["mode"] == statmod.S_IFREG | 0o600

    fs.rename("/v/d/f", "/v/d/g")  # rename: parent mtime+ctime, the inode's ctime
    d3, g3 = fs.stat("/v/d"), fs.stat("/v/d/g")
    assert d3["mtime_ns"] > d1["mtime_ns"] and g3["ctime_ns"] > f2["ctime_ns"]
    assert g3["mtime_ns"] == f2["mtime_ns"] and g3["ino"] == f0["ino"]

    fs.utime("/v/d/g", 1234)
    g4 = fs.stat("/v/d/g")
    assert g4["mtime_ns"] == 1234 and g4["ctime_ns"] > g3["ctime_ns"]

    fs.unlink("/v/d/g")
    assert fs.stat("/v/d")["mtime_ns"] > d3["mtime_ns"]


def test_write_file_replaces_content_in_place(kernel: FakeKernel) -> None:
    fs = kernel.api
    fs.write_file("/v/f", b"long content")
    first = fs.stat("/v/f")
    fs.chmod("/v/f", 0o640)
    fs.write_file("/v/f", b"short")
    second = fs.stat("/v/f")
    assert fs.read_file("/v/f") == b"short"
    assert second["ino"] == first["ino"] and second["size"] == 5
    assert second["mode"] == statmod.S_IFREG | 0o640


def test_rename_replaces_atomically_and_checks_like_linux(kernel: FakeKernel) -> None:
    fs = kernel.api
    fs.write_file("/v/a", b"A")
    fs.write_file("/v/b", b"B")
    fs.rename("/v/a", "/v/b")
    assert fs.read_file("/v/b") == b"A" and fs.listdir("/v") == ["b"]
    fs.mkdir("/v/d")
    fs.mkdir("/v/e")
    fs.mkdir("/v/e/sub")
    assert kernel.errno_of("fs.rename", "/v/d", "/v/e") == errno.ENOTEMPTY
    assert kernel.errno_of("fs.rename", "/v/d", "/v/b") == errno.ENOTDIR
    assert kernel.errno_of("fs.rename", "/v/b", "/v/d") == errno.EISDIR
    assert kernel.errno_of("fs.rename", "/v/e", "/v/e/sub/x") == errno.EINVAL
    assert kernel.errno_of("fs.rename", "/v/e/sub", "/v/e") == errno.ENOTEMPTY
    fs.rename("/v/e/sub", "/v/d")  # a directory over an empty directory
    assert fs.listdir("/v") == ["b", "d", "e"] and fs.stat("/v/e")["nlink"] == 2
    fs.rename("/v/b", "/v/b")  # the same file: nothing happens
    assert fs.read_file("/v/b") == b"A"


def test_volumes_behave_as_mount_points(kernel: FakeKernel) -> None:
    fs = kernel.api
    fs.mkdir("/w")
    fs.write_file("/v/f", b"x")
    for src, dst in [("/v/f", "/w/f"), ("/v", "/x"), ("/v", "/v/y"), ("/v/f", "/w"),
                     ("/", "/v/z"), ("/v/f", "/")]:
        assert kernel.errno_of("fs.rename", src, dst) == errno.EXDEV, (src, dst)
    assert fs.read_file("/v/f") == b"x" and fs.listdir("/w") == []
    assert kernel.errno_of("fs.rmdir", "/v") == errno.ENOTEMPTY
    fs.unlink("/v/f")
    fs.rmdir("/v")
    assert fs.listdir("/") == ["w"]
    assert kernel.errno_of("fs.stat", "/v") == errno.ENOENT


def test_the_root_is_virtual(kernel: FakeKernel) -> None:
    fs = kernel.api
    assert fs.listdir("/") == ["v"]
    assert fs.stat("/")["type"] == "dir"
    expected = {("fs.mkdir", "/"): errno.EEXIST, ("fs.rmdir", "/"): errno.EBUSY,
                ("fs.unlink", "/"): errno.EISDIR, ("fs.read_file", "/"): errno.EISDIR,
                ("fs.write_file", "/", b""): errno.EISDIR,
                ("fs.write_file", "/new", b""): errno.EPERM,
                ("fs.symlink", "/new", "t"): errno.EPERM,
                ("fs.symlink", "/v", "t"): errno.EEXIST,
                ("fs.write_file", "/v", b""): errno.EISDIR,
                ("fs.chmod", "/", 0o777): errno.EPERM, ("fs.readlink", "/"): errno.EINVAL}
    for call, code in expected.items():
        assert kernel.errno_of(*call) == code, call
    assert kernel.errno_of("fs.mkdir", "/v") == errno.EEXIST
    assert fs.listdir("/") == ["v"]


def test_size_limits_give_clear_errors_and_change_nothing(kernel: FakeKernel) -> None:
    fs = kernel.api
    assert kernel.errno_of("fs.write_file", "/v/big", b"x" * 1001) == errno.EFBIG
    assert kernel.errno_of("fs.stat", "/v/big") == errno.ENOENT
    fs.write_file("/v/f", b"x" * 1000)
    assert kernel.errno_of("fs.pwrite", "/v/f", 1000, b"y") == errno.EFBIG
    assert kernel.errno_of("fs.truncate", "/v/f", 1001) == errno.EFBIG
    assert kernel.errno_of("fs.pwrite", "/v/f", 2**64 - 1, b"y") == errno.EFBIG
    assert fs.pwrite("/v/f", 2**40, b"") == 0  # zero bytes: no limit, no change
    fs.write_file("/v/g", b"x" * 1000)
    fs.write_file("/v/h", b"x" * 900)
    assert kernel.errno_of("fs.write_file", "/v/i", b"x" * 101) == errno.EDQUOT
    fs.truncate("/v/h", 1000)  # exactly at the quota is allowed
    fs.write_file("/v/i", b"")
    assert kernel.errno_of("fs.pwrite", "/v/i", 0, b"y") == errno.EDQUOT
    assert kernel.errno_of("fs.symlink", "/v/s", "t") == errno.EDQUOT
    fs.write_file("/v/h", b"x" * 100)  # shrinking frees quota
    fs.write_file("/v/i", b"x" * 900)
    assert kernel.fs.stats()["bytes"] == 3000
    assert [len(fs.read_file(p)) for p in ("/v/f", "/v/g", "/v/h", "/v/i")] == \
        [1000, 1000, 100, 900]


def test_inode_limit(kernel: FakeKernel) -> None:
    for i in range(19):  # the root is the 20th
        kernel.api.mkdir(f"/v/d{i}")
    assert kernel.errno_of("fs.mkdir", "/v/one-too-many") == errno.EDQUOT
    assert kernel.errno_of("fs.write_file", "/v/one-too-many", b"") == errno.EDQUOT
    kernel.api.rmdir("/v/d0")
    kernel.api.write_file("/v/now-fits", b"")


def test_symlinks_are_stored_never_followed(kernel: FakeKernel) -> None:
    fs = kernel.api
    fs.mkdir("/v/d")
    fs.symlink("/v/link", "d")
    fs.symlink("/v/escape", "../../../../etc/passwd")
    assert fs.readlink("/v/escape") == "../../../../etc/passwd"
    link = fs.stat("/v/link")
    assert link["type"] == "symlink" and link["size"] == 1
    assert link["mode"] == statmod.S_IFLNK | 0o777
    for call in [("fs.read_file", "/v/escape"), ("fs.pread", "/v/escape", 0, 10),
                 ("fs.write_file", "/v/escape", b"x"), ("fs.pwrite", "/v/escape", 0, b"x"),
                 ("fs.truncate", "/v/escape", 0), ("fs.listdir", "/v/link"),
                 ("fs.write_file", "/v/link/f", b"x"), ("fs.stat", "/v/link/f"),
                 ("fs.chmod", "/v/link", 0o700)]:
        assert kernel.errno_of(*call) == errno.ELOOP, call
    assert kernel.errno_of("fs.readlink", "/v/d") == errno.EINVAL
    assert kernel.errno_of("fs.symlink", "/v/link", "x") == errno.EEXIST
    assert kernel.errno_of("fs.symlink", "/v/empty", "") == errno.ENOENT
    assert kernel.errno_of("fs.rmdir", "/v/link") == errno.ENOTDIR
    fs.rename("/v/link", "/v/d/moved")
    assert fs.readlink("/v/d/moved") == "d"
    fs.unlink("/v/d/moved")
    assert fs.listdir("/v/d") == []


@pytest.mark.parametrize("call", [
    ("fs.write_file", "/v/f", "text, not bytes"),
    ("fs.write_file", "/v/f", 5),
    ("fs.pread", "/v/f", "0", 10),
    ("fs.pread", "/v/f", 0, 1.5),
    ("fs.pread", "/v/f", True, 1),
    ("fs.pread", "/v/f", -1, 1),
    ("fs.pread", "/v/f", 0, -1),
    ("fs.pwrite", "/v/f", None, b"x"),
    ("fs.pwrite", "/v/f", -1, b"x"),
    ("fs.pwrite", "/v/f", 0, "x"),
    ("fs.truncate", "/v/f", -1),
    ("fs.truncate", "/v/f", b"1"),
    ("fs.mkdir", "/v/d", "755"),
    ("fs.mkdir", "/v/d", -1),
    ("fs.chmod", "/v/f", None),
    ("fs.utime", "/v/f", 2**63),
    ("fs.utime", "/v/f", 1.0),
    ("fs.symlink", "/v/s", b"bytes"),
    ("fs.symlink", "/v/s", "nul\0"),
    ("fs.stat",),
    ("fs.stat", "/v/f", "extra"),
    ("fs.rename", "/v/f"),
])
def test_wrong_parameters_are_einval_and_change_nothing(kernel: FakeKernel,
                                                        call: tuple[Any, ...]) -> None:
    kernel.api.write_file("/v/f", b"data")
    before = kernel.api.stat("/v/f"), kernel.api.listdir("/v")
    assert kernel.errno_of(*call) == errno.EINVAL
    assert (kernel.api.stat("/v/f"), kernel.api.listdir("/v")) == before
    assert kernel.api.read_file("/v/f") == b"data"


def test_stats_count_what_volumes_hold(kernel: FakeKernel) -> None:
    kernel.api.mkdir("/w")
    kernel.api.write_file("/v/f", b"12345")
    kernel.api.mkdir("/v/d")
    kernel.api.symlink("/w/s", "abc")
    stats = kernel.fs.stats()
    assert stats["volumes"] == 2 and stats["files"] == 1 and stats["bytes"] == 8
    assert stats["inodes"] == 5 and stats["failed"] == 0 and stats["journal_bytes"] > 0
