"""``fs.create``: ``open(O_CREAT[|O_EXCL])`` in one request, exclusive against every client,
and never replacing a file that is already there (the mount's create rests on both)."""

from __future__ import annotations

import errno
import stat as statmod
from pathlib import Path
from typing import Any, Iterator

import pytest
from fs_harness import FakeKernel


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[FakeKernel]:
    kernel = FakeKernel(tmp_path / "data", volume_max_inodes=4)
    kernel.api.mkdir("/v")
    yield kernel
    kernel.close()


def test_create_makes_an_empty_file_with_its_mode_and_returns_its_stat(
        kernel: FakeKernel) -> None:
    st = kernel.api.create("/v/f", 0o4711)
    assert st == kernel.api.stat("/v/f")
    assert (st["type"], st["size"], st["mode"]) == ("file", 0, statmod.S_IFREG | 0o4711)
    assert kernel.api.create("/v/g")["mode"] == statmod.S_IFREG | 0o644


def test_create_leaves_a_file_already_there_as_it_is(kernel: FakeKernel) -> None:
    kernel.api.write_file("/v/f", b"someone else's data")
    before = kernel.api.stat("/v/f")
    assert kernel.api.create("/v/f", 0o600) == before
    assert kernel.api.read_file("/v/f") == b"someone else's data"


def test_exclusive_create_of_an_existing_name_is_eexist_and_changes_nothing(
        kernel: FakeKernel) -> None:
    kernel.api.write_file("/v/f", b"first")
    assert kernel.errno_of("fs.create", "/v/f", 0o600, True) == errno.EEXIST
    assert kernel.api.read_file("/v/f") == b"first"
    kernel.api.symlink("/v/s", "f")
    assert kernel.errno_of("fs.create", "/v/s", 0o600, True) == errno.EEXIST
    assert kernel.api.create("/v/new", 0o600, True)["size"] == 0


@pytest.mark.parametrize("path, code", [
    ("/v/d", errno.EISDIR),        # a directory is there
    ("/v/s", errno.ELOOP),         # a symlink: never followed
    ("/v/missing/f", errno.ENOENT),
    ("/v/f/x", errno.ENOTDIR),
    ("/nope", errno.EPERM),        # only volumes are made in /
    ("/", errno.EISDIR),
])
def test_create_fails_as_open_o_creat_does(kernel: FakeKernel, path: str, code: int) -> None:
    kernel.api.mkdir("/v/d")
    kernel.api.symlink("/v/s", "d")
    kernel.api.write_file("/v/f", b"")
    before = sorted(kernel.api.listdir("/v"))
    assert kernel.errno_of("fs.create", path, 0o644, False) == code
    assert sorted(kernel.api.listdir("/v")) == before


def test_create_past_the_inode_limit_is_edquot_and_makes_nothing(kernel: FakeKernel) -> None:
    for name in "abc":
        kernel.api.create(f"/v/{name}")
    assert kernel.errno_of("fs.create", "/v/d", 0o644, False) == errno.EDQUOT
    assert kernel.api.listdir("/v") == ["a", "b", "c"]


@pytest.mark.parametrize("params", [("/v/f", "0644"), ("/v/f", 0o644, 1), ("/v/f", -1),
                                    ("/v/f", 0o644, False, 1)])
def test_wrong_parameters_are_einval(kernel: FakeKernel, params: tuple[Any, ...]) -> None:
    assert kernel.errno_of("fs.create", *params) == errno.EINVAL
    assert kernel.api.listdir("/v") == []


def test_a_created_file_survives_a_restart_with_its_mode(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "data")
    kernel.api.mkdir("/v")
    kernel.api.create("/v/f", 0o600)
    kernel.close()
    again = FakeKernel(tmp_path / "data")
    try:
        assert again.api.stat("/v/f")["mode"] == statmod.S_IFREG | 0o600
    finally:
        again.close()


def test_create_with_truncate_empties_the_file_there_in_the_same_request(
        kernel: FakeKernel) -> None:
    kernel.api.write_file("/v/f", b"someone else's data")
    kernel.api.chmod("/v/f", 0o600)
    st = kernel.api.create("/v/f", 0o644, False, True)
    assert (st["size"], st["mode"]) == (0, statmod.S_IFREG | 0o600)  # mode: the file's own
    assert st == kernel.api.stat("/v/f")
    assert kernel.api.read_file("/v/f") == b""
    assert kernel.api.create("/v/new", 0o640, False, True)["mode"] == statmod.S_IFREG | 0o640
    assert kernel.errno_of("fs.create", "/v/f", 0o644, True, True) == errno.EEXIST


def test_a_truncating_create_survives_a_restart(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "data")
    kernel.api.mkdir("/v")
    kernel.api.write_file("/v/f", b"old")
    kernel.api.create("/v/f", 0o644, False, True)
    kernel.close()
    again = FakeKernel(tmp_path / "data")
    try:
        assert again.api.read_file("/v/f") == b""
    finally:
        again.close()
