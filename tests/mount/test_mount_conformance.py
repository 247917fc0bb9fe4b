"""Conformance in the style of pjdfstest: every case of each system call is run in a local
directory and through the mount of a real farm (in both farm modes), and the outcomes
(0 or the errno's name, and the resulting types, modes, sizes and times) must be equal.

Cases that need another user (EACCES, EPERM on ownership) are left out: the tests run as
root, for whom a local directory and the mount both grant everything.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from mountctl import Mount, mounted

from farmctl import Farm, start_farm

LONG = "n" * 256  # one byte over NAME_MAX


def outcome(action: Callable[[], Any]) -> Any:
    """0 (or what the call returned) on success, else the errno's name."""
    try:
        result = action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return 0 if result is None else result


def describe(path: Path) -> Any:
    """Type, permission bits, size (files and links) and mtime, or the lstat errno."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0)
    size = None if stat.S_ISDIR(st.st_mode) else st.st_size  # a dir's size is fs-specific
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), size)


def opened(path: Path, flags: int, mode: int = 0o644) -> Callable[[], None]:
    def action() -> None:
        os.close(os.open(path, flags, mode))
    return action


def ftruncated(path: Path, flags: int, size: int) -> Callable[[], None]:
    def action() -> None:
        fd = os.open(path, flags)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    return action


def case_open(d: Path) -> list[Any]:
    (d / "file").write_bytes(b"12345")
    (d / "dir").mkdir()
    return [
        outcome(opened(d / "new", os.O_CREAT | os.O_WRONLY, 0o640)), describe(d / "new"),
        outcome(opened(d / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY)),
        outcome(opened(d / "missing", os.O_RDONLY)),
        outcome(opened(d / "nodir" / "x", os.O_CREAT | os.O_WRONLY)),
        outcome(opened(d / "file" / "x", os.O_RDONLY)),
        outcome(opened(d / "file", os.O_RDONLY | os.O_DIRECTORY)),
        outcome(opened(d / "dir", os.O_WRONLY)),
        outcome(opened(d / "dir", os.O_RDONLY)),
        outcome(opened(d / LONG, os.O_CREAT | os.O_WRONLY)),
        outcome(opened(d / "file", os.O_WRONLY | os.O_TRUNC)), describe(d / "file"),
        outcome(opened(d / "odd", os.O_CREAT | os.O_WRONLY, 0o4755)), describe(d / "odd"),
    ]


def case_mkdir(d: Path) -> list[Any]:
    (d / "file").write_bytes(b"")
    os.symlink("file", d / "link")
    return [
        outcome(lambda: os.mkdir(d / "a", 0o750)), describe(d / "a"),
        outcome(lambda: os.mkdir(d / "a")),
        outcome(lambda: os.mkdir(d / "missing" / "a")),
        outcome(lambda: os.mkdir(d / "file" / "a")),
        outcome(lambda: os.mkdir(d / LONG)),
        outcome(lambda: os.mkdir(d / "link")),
        outcome(lambda: os.mkdir(d / "file")),
        outcome(lambda: os.mkdir(d / "sticky", 0o1777)), describe(d / "sticky"),
    ]


def case_rmdir(d: Path) -> list[Any]:
    (d / "full").mkdir()
    (d / "full" / "f").write_bytes(b"")
    (d / "empty").mkdir()
    (d / "file").write_bytes(b"")
    os.symlink("empty", d / "link")
    return [
        outcome(lambda: os.rmdir(d / "full")),
        outcome(lambda: os.rmdir(d / "file")),
        outcome(lambda: os.rmdir(d / "missing")),
        outcome(lambda: os.rmdir(d / "file" / "x")),
        outcome(lambda: os.rmdir(d / "link")),
        outcome(lambda: os.rmdir(d / "empty")), describe(d / "empty"),
        outcome(lambda: os.rmdir(d / LONG)),
    ]


def case_unlink(d: Path) -> list[Any]:
    (d / "file").write_bytes(b"x")
    (d / "dir").mkdir()
    os.symlink("file", d / "link")
    return [
        outcome(lambda: os.unlink(d / "dir")),
        outcome(lambda: os.unlink(d / "missing")),
        outcome(lambda: os.unlink(d / "file" / "x")),
        outcome(lambda: os.unlink(d / "link")), describe(d / "link"), describe(d / "file"),
        outcome(lambda: os.unlink(d / "file")), describe(d / "file"),
        outcome(lambda: os.unlink(d / LONG)),
    ]


def case_rename(d: Path) -> list[Any]:
    for name in ("f1", "f2"):
        (d / name).write_bytes(name.encode())
    for name in ("d1", "d2", "full"):
        (d / name).mkdir()
    (d / "full" / "x").write_bytes(b"")
    (d / "d1" / "sub").mkdir()
    return [
        outcome(lambda: os.rename(d / "f1", d / "f2")), describe(d / "f1"),
        outcome(lambda: (d / "f2").read_bytes()),
        outcome(lambda: os.rename(d / "f2", d / "d2")),
        outcome(lambda: os.rename(d / "d2", d / "f2")),
        outcome(lambda: os.rename(d / "d2", d / "full")),
        outcome(lambda: os.rename(d / "d1", d / "d1" / "sub" / "inside")),
        outcome(lambda: os.rename(d / "missing", d / "x")),
        outcome(lambda: os.rename(d / "f2", d / "nodir" / "x")),
        outcome(lambda: os.rename(d / "f2", d / "f2")),
        outcome(lambda: os.rename(d / "f2", d / LONG)),
        outcome(lambda: os.rename(d / "d1", d / "d2")), describe(d / "d2" / "sub"),
        outcome(lambda: os.rename(d / "f2", d / "d2" / "sub" / "moved")),
        describe(d / "d2" / "sub" / "moved"),
    ]


def case_truncate(d: Path) -> list[Any]:
    (d / "file").write_bytes(b"0123456789")
    (d / "dir").mkdir()
    return [
        outcome(lambda: os.truncate(d / "file", 4)), describe(d / "file"),
        outcome(lambda: (d / "file").read_bytes()),
        outcome(lambda: os.truncate(d / "file", 100_000)), describe(d / "file"),
        outcome(lambda: (d / "file").read_bytes()[-3:]),
        outcome(lambda: os.truncate(d / "file", -1)),
        outcome(lambda: os.truncate(d / "missing", 1)),
        outcome(lambda: os.truncate(d / "dir", 1)),
        outcome(lambda: os.truncate(d / "file" / "x", 1)),
        outcome(lambda: os.truncate(d / LONG, 1)),
    ]


def case_ftruncate(d: Path) -> list[Any]:
    (d / "file").write_bytes(b"0123456789")
    return [
        outcome(ftruncated(d / "file", os.O_RDWR, 3)), describe(d / "file"),
        outcome(ftruncated(d / "file", os.O_WRONLY, 9000)), describe(d / "file"),
        outcome(ftruncated(d / "file", os.O_RDONLY, 1)), describe(d / "file"),
        outcome(ftruncated(d / "file", os.O_RDWR, -1)),
        outcome(lambda: (d / "file").read_bytes()[:4]),
    ]


def case_symlink(d: Path) -> list[Any]:
    (d / "file").write_bytes(b"")
    return [
        outcome(lambda: os.symlink("some/where", d / "l")), describe(d / "l"),
        outcome(lambda: os.readlink(d / "l")),
        outcome(lambda: os.symlink("x", d / "file")),
        outcome(lambda: os.symlink("x", d / "l")),
        outcome(lambda: os.symlink("x", d / "missing" / "l")),
        outcome(lambda: os.symlink("x", d / "file" / "l")),
        outcome(lambda: os.symlink("x", d / LONG)),
        outcome(lambda: os.symlink("t" * 4096, d / "toolong")),
        outcome(lambda: os.symlink("file", d / "tofile")),
        outcome(lambda: (d / "tofile").read_bytes()),
        outcome(lambda: os.readlink(d / "file")),
    ]


def case_chmod(d: Path) -> list[Any]:
    (d / "file").write_bytes(b"")
    (d / "dir").mkdir()
    os.symlink("file", d / "link")
    return [
        outcome(lambda: os.chmod(d / "file", 0o600)), describe(d / "file"),
        outcome(lambda: os.chmod(d / "dir", 0o711)), describe(d / "dir"),
        outcome(lambda: os.chmod(d / "file", 0o7777)), describe(d / "file"),
        outcome(lambda: os.chmod(d / "link", 0o640)), describe(d / "file"),
        outcome(lambda: os.chmod(d / "missing", 0o600)),
        outcome(lambda: os.chmod(d / "file" / "x", 0o600)),
        outcome(lambda: os.chmod(d / LONG, 0o600)),
    ]


def case_utimensat(d: Path) -> list[Any]:
    (d / "file").write_bytes(b"")
    (d / "dir").mkdir()
    os.symlink("file", d / "link")
    then = 1_600_000_000_123_456_789

    def mtime(path: Path) -> Any:
        return outcome(lambda: os.lstat(path).st_mtime_ns)

    return [
        outcome(lambda: os.utime(d / "file", ns=(then, then))), mtime(d / "file"),
        outcome(lambda: os.utime(d / "dir", ns=(then, then + 1))), mtime(d / "dir"),
        outcome(lambda: os.utime(d / "link", ns=(then, then + 2),
                                 follow_symlinks=False)), mtime(d / "link"),
        mtime(d / "file"),
        outcome(lambda: os.utime(d / "link", ns=(then, then + 3))), mtime(d / "file"),
        outcome(lambda: os.utime(d / "missing", ns=(then, then))),
        outcome(lambda: os.utime(d / "file" / "x", ns=(then, then))),
        outcome(lambda: os.utime(d / "file")),  # UTIME_NOW
        outcome(lambda: abs(os.lstat(d / "file").st_mtime_ns - then) > 10**9),
    ]


CASES = [case_open, case_mkdir, case_rmdir, case_unlink, case_rename, case_truncate,
         case_ftruncate, case_symlink, case_chmod, case_utimensat]

MODES = {"partitioned": (), "locked": ("--mode", "locked", "--threads", "2")}


@pytest.fixture(scope="module", params=sorted(MODES))
def mode_mount(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Farm, Mount]]:
    mode = request.param
    base = tmp_path_factory.mktemp(f"conf-{mode}")
    with start_farm(base, 1 if mode == "locked" else 2, *MODES[mode]) as farm:
        farm.client().fs.mkdir("/conf")
        with mounted(farm, base / "mp") as mount:
            yield farm, mount


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_errno_per_case_matches_a_local_directory(
        case: Callable[[Path], list[Any]], mode_mount: tuple[Farm, Mount],
        tmp_path: Path) -> None:
    _, mount = mode_mount
    local = tmp_path / case.__name__
    remote = mount.path / "conf" / case.__name__
    local.mkdir()
    remote.mkdir()
    expected = case(local)
    assert case(remote) == expected
