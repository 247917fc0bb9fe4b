"""The oracle of the differential tests: the same fs operations on a real host directory.

Shared by the in-process test (``test_fs_differential``) and the one through a real farm
(``test_fs_farm``), so both check kernelfarm against one model of what Linux does.

The host directory stands for ``/``: volume ``v`` is ``<host>/v``.  Where kernelfarm
deliberately differs from a plain directory, the model says so explicitly: volumes act as
mount points (a rename between volumes or of a volume root is ``EXDEV``) and ``/`` holds
only volumes (creating a file there is ``EPERM``).  Stat fields are compared where both
sides define them the same way (see :func:`comparable_stat`).
"""

from __future__ import annotations

import errno
import os
import stat as statmod
from typing import Any, Callable

from hypothesis import strategies as st

VOLUMES = ["v", "w"]
NAMES = ["a", "b", "c"]
"""Few names, so that operations keep meeting what earlier ones made."""

# Depth 2 (an entry of a volume root) weighs most, so sequences build real trees.
PATHS = (["/v", "/w"]
         + [f"/v/{a}" for a in NAMES] * 6 + [f"/w/{a}" for a in NAMES] * 2
         + [f"/v/{a}/{b}" for a in NAMES for b in NAMES[:2]])
paths = st.sampled_from(PATHS)
in_v = st.sampled_from([p for p in PATHS if p.startswith("/v/")])
renames = st.one_of(st.tuples(in_v, in_v), st.tuples(in_v, in_v), st.tuples(paths, paths))
data = st.binary(max_size=24)
offsets = st.integers(min_value=-1, max_value=30)
targets = st.sampled_from(["a", "../b", "/etc/passwd", "v/a/c", "."])
"""Symlink targets: stored text, never followed (relative, absolute, up and out)."""
modes = st.sampled_from([0o700, 0o644, 0o4755, 0o1777, 0o000])
times = st.integers(min_value=-2**40, max_value=2**62)

ops = st.one_of(
    st.tuples(st.just("mkdir"), paths),
    st.tuples(st.just("rmdir"), paths),
    st.tuples(st.just("listdir"), paths),
    st.tuples(st.just("listdir"), st.just("/")),
    st.tuples(st.just("stat"), paths),
    st.tuples(st.just("write_file"), paths, data),
    st.tuples(st.just("write_file"), paths, data),
    st.tuples(st.just("read_file"), paths),
    st.tuples(st.just("pread"), paths, offsets, st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("pwrite"), paths, offsets, data),
    st.tuples(st.just("truncate"), paths, offsets),
    st.tuples(st.just("unlink"), paths),
    renames.map(lambda pair: ("rename", *pair)),
    renames.map(lambda pair: ("rename", *pair)),
    st.tuples(st.just("symlink"), paths, targets),
    st.tuples(st.just("readlink"), paths),
    st.tuples(st.just("chmod"), paths, modes),
    st.tuples(st.just("utime"), paths, times),
    st.tuples(st.just("fsync"), paths),
)

SEED: list[tuple[Any, ...]] = [
    ("mkdir", "/v"), ("mkdir", "/v/a"), ("write_file", "/v/b", b"seed data"),
    ("write_file", "/v/a/c", b"x" * 10),
]
"""A small tree to start from, so that short sequences meet files and directories."""


def seed(second_volume: bool) -> list[tuple[Any, ...]]:
    return SEED + [("mkdir", "/w")] if second_volume else list(SEED)


def comparable_stat(st_: os.stat_result | dict[str, Any]) -> dict[str, Any]:
    """The stat fields both sides define the same way (a dir's size and the times differ
    by design: ext4 reports 4096 for a directory, and clocks are not shared)."""
    if isinstance(st_, os.stat_result):
        mode = st_.st_mode
        kind = ("dir" if statmod.S_ISDIR(mode) else
                "symlink" if statmod.S_ISLNK(mode) else "file")
        out = {"type": kind, "mode": mode, "nlink": st_.st_nlink}
        if kind != "dir":
            out["size"] = st_.st_size
        return out
    out = {"type": st_["type"], "mode": st_["mode"], "nlink": st_["nlink"]}
    if st_["type"] != "dir":
        out["size"] = st_["size"]
    return out


class Host:
    """The same operations on a real directory, with the model's deliberate differences."""

    def __init__(self, root: str) -> None:
        self.root = root

    def real(self, path: str) -> str:
        """The host path; a symlink as an intermediate component is ``ELOOP``, as in
        kernelfarm (which never follows one), where the host would follow it."""
        parts = path.split("/")[1:]
        for depth in range(1, len(parts)):
            prefix = self.root + "/" + "/".join(parts[:depth])
            if os.path.islink(prefix):
                raise OSError(errno.ELOOP, prefix)
            if not os.path.isdir(prefix):
                break  # the host's own call reports ENOENT or ENOTDIR
        return self.root + path

    def _not_a_link(self, path: str) -> str:
        """The host path of an operation kernelfarm never applies through a symlink."""
        real = self.real(path)
        if os.path.islink(real):
            raise OSError(errno.ELOOP, real)
        return real

    def run(self, op: str, *args: Any) -> Any:
        return getattr(self, op)(*args)

    def mkdir(self, path: str) -> None:
        os.mkdir(self.real(path))
        os.chmod(self.real(path), 0o755)  # kernelfarm has no umask

    def rmdir(self, path: str) -> None:
        os.rmdir(self.real(path))

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._not_a_link(path)))

    def stat(self, path: str) -> dict[str, Any]:
        return comparable_stat(os.lstat(self.real(path)))

    def write_file(self, path: str, content: bytes) -> None:
        real = self.real(path)
        if path.count("/") == 1 and not os.path.lexists(real):
            raise OSError(errno.EPERM, "only volumes in /")
        existed = os.path.lexists(real)
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        if not existed:
            os.chmod(real, 0o644)

    def read_file(self, path: str) -> bytes:
        fd = os.open(self.real(path), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def pread(self, path: str, offset: int, size: int) -> bytes:
        fd = os.open(self.real(path), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def pwrite(self, path: str, offset: int, content: bytes) -> int:
        fd = os.open(self.real(path), os.O_WRONLY | os.O_NOFOLLOW)
        try:
            return os.pwrite(fd, content, offset)
        finally:
            os.close(fd)

    def truncate(self, path: str, size: int) -> None:
        if size < 0:
            raise OSError(errno.EINVAL, "negative size")  # before the lookup, as Linux
        os.truncate(self._not_a_link(path), size)

    def unlink(self, path: str) -> None:
        os.unlink(self.real(path))

    def rename(self, src: str, dst: str) -> None:
        src_vol, dst_vol = src.split("/")[1], dst.split("/")[1]
        if src_vol != dst_vol or src.count("/") == 1 or dst.count("/") == 1:
            raise OSError(errno.EXDEV, "volumes are separate mounts")
        real_src = self.real(src)
        if not os.path.isdir(os.path.dirname(real_src)):
            # Linux resolves the source's parent first: its ENOENT or ENOTDIR comes before
            # anything about the destination (a symlink on its path, ELOOP here).
            os.rename(real_src, self.root + dst)
        os.rename(real_src, self.real(dst))


    def symlink(self, path: str, target: str) -> None:
        real = self.real(path)
        if path.count("/") == 1 and not os.path.lexists(real):
            raise OSError(errno.EPERM, "only volumes in /")
        os.symlink(target, real)

    def readlink(self, path: str) -> str:
        return os.readlink(self.real(path))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._not_a_link(path), mode & 0o7777)

    def utime(self, path: str, mtime_ns: int) -> None:
        os.utime(self.real(path), ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def fsync(self, path: str) -> None:
        """kernelfarm's ``fs.fsync`` makes the path's volume durable; it needs the path to
        exist (any type, a symlink too), as an ``open`` + ``fsync`` of it would."""
        os.lstat(self.real(path))


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """``("ok", result)`` or ``("error", "ENOENT")``: what both sides are compared by."""
    try:
        return "ok", fn(*args)
    except OSError as exc:
        return "error", errno.errorcode[exc.errno or 0]


def host_tree(root: str) -> dict[str, Any]:
    """Every inode below the host root, by path, with file contents."""
    tree: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            real = os.path.join(dirpath, name)
            path = "/" + os.path.relpath(real, root)
            entry = comparable_stat(os.lstat(real))
            if entry["type"] == "file":
                with open(real, "rb") as fh:
                    entry["data"] = fh.read()
            elif entry["type"] == "symlink":
                entry["target"] = os.readlink(real)
            tree[path] = entry
    return tree


def fs_tree(call: Callable[..., Any], volumes: list[str],
            exact: bool = False) -> dict[str, Any]:
    """Every inode of ``volumes`` through ``call(method, *params)``; ``exact`` keeps the
    whole stat (ino and times too)."""
    tree: dict[str, Any] = {}
    todo = ["/" + vol for vol in volumes]
    while todo:
        path = todo.pop()
        raw = call("fs.stat", path)
        entry = dict(raw) if exact else comparable_stat(raw)
        if raw["type"] == "dir":
            todo.extend(f"{path}/{name}" for name in call("fs.listdir", path))
        elif raw["type"] == "file":
            entry["data"] = call("fs.read_file", path)
        else:
            entry["target"] = call("fs.readlink", path)
        tree[path] = entry
    return tree
