"""The in-memory namespace of one volume: directories, regular files and symlinks.

Semantics and error codes follow Linux (ext4/tmpfs) wherever a path-based, stateless
interface can: the order in which errors are detected is Linux's too, because the
differential test compares errno for errno against a real directory.

Every mutation takes its timestamp (``now``) and, when it creates an inode, its inode
number from the caller; the journal records both, so replaying a journal reproduces the
tree exactly, ``stat`` included.  A mutation checks everything before it changes anything:
it either fails with nothing changed or succeeds whole, so a record is journaled only for a
mutation that happened.

Symlinks are stored, never followed: a symlink's target is opaque text that no operation
interprets, so no link can lead outside its volume.  An operation that would have to
follow one (a symlink as an intermediate component, or reading, writing, truncating,
listing or chmod-ing a symlink) fails with ``ELOOP``, as Linux's ``openat2`` does under
``RESOLVE_NO_SYMLINKS``; ``stat``, ``utime``, ``unlink``, ``rename`` and ``readlink``
act on the link itself (``stat`` is ``lstat``).

Limits (file size, quota, inode count) are enforced on live operations and lifted during
recovery, so a journal written under a larger limit always replays.
"""

from __future__ import annotations

import errno
import stat as statmod
from dataclasses import dataclass
from typing import Any, Final, cast

from kernelfarm.errors import MessageTooBig, posix
from kernelfarm.fs.chunks import BIG, Chunks
from kernelfarm.fs.sparse import Sparse

ROOT_INO = 1


class Inode:
    __slots__ = ("ino", "perm", "mtime_ns", "ctime_ns")

    def __init__(self, ino: int, perm: int, now: int) -> None:
        self.ino = ino
        self.perm = perm
        self.mtime_ns = now
        self.ctime_ns = now


class Dir(Inode):
    __slots__ = ("entries", "subdirs")

    def __init__(self, ino: int, perm: int, now: int) -> None:
        super().__init__(ino, perm, now)
        self.entries: dict[str, Inode] = {}
        self.subdirs = 0  # nlink = 2 + subdirs, as on ext4


class File(Inode):
    __slots__ = ("data",)

    def __init__(self, ino: int, perm: int, now: int,
                 data: bytes | bytearray | Sparse | Chunks) -> None:
        super().__init__(ino, perm, now)
        # bytes until the first in-place change: write_file then read_file copies nothing;
        # Chunks while it grows by big appends (a stream), bytearray after other changes;
        # Sparse once a change leaves a hole (truncate or pwrite past the end).
        self.data = data


class Symlink(Inode):
    __slots__ = ("target", "size")

    def __init__(self, ino: int, now: int, target: str) -> None:
        super().__init__(ino, 0o777, now)
        self.target = target
        self.size = len(target.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Limits:
    max_file_bytes: int
    quota_bytes: int
    max_inodes: int


UNLIMITED = Limits(2**63, 2**63, 2**63)

# Final: a compiled FsSubsystem.create (kernelfarm.accel) then shows it in its signature.
FILE_PERM: Final = 0o644  # a new file's mode: open(O_CREAT, 0o666) under the usual umask 022


class Tree:
    """One volume's namespace; ``comps`` are the path components below the volume root."""

    def __init__(self, name: str, root: Dir, limits: Limits = UNLIMITED) -> None:
        self.name = name
        self.root = root
        self.limits = limits
        self.next_ino = root.ino + 1
        self.bytes_used = 0   # file sizes plus symlink target sizes: what the quota counts
        self.inodes = 1       # the root included
        self.files = 0

    @classmethod
    def new(cls, name: str, perm: int, now: int, limits: Limits = UNLIMITED) -> Tree:
        return cls(name, Dir(ROOT_INO, perm, now), limits)

    # -- lookup ----------------------------------------------------------------------------

    def _where(self, comps: tuple[str, ...]) -> str:
        return "/" + "/".join((self.name, *comps))

    def _dir_of(self, comps: tuple[str, ...]) -> Dir:
        """The directory that holds ``comps[-1]`` (``comps`` must not be empty)."""
        node: Dir = self.root
        for depth in range(len(comps) - 1):
            child = node.entries.get(comps[depth])
            if child is None:
                raise posix(errno.ENOENT, self._where(comps[:depth + 1]))
            if not isinstance(child, Dir):
                code = errno.ELOOP if isinstance(child, Symlink) else errno.ENOTDIR
                raise posix(code, self._where(comps[:depth + 1]))
            node = child
        return node

    def lookup(self, comps: tuple[str, ...]) -> Inode:
        node = self.find(comps)
        if node is None:
            raise posix(errno.ENOENT, self._where(comps))
        return node

    def find(self, comps: tuple[str, ...]) -> Inode | None:
        """As :meth:`lookup`, but ``None`` when the last component's directory exists and
        does not hold it: the expected miss, answered without an exception.  Every other
        failure (a missing or non-directory component on the way) raises as in lookup."""
        if len(comps) == 1:  # a file at the volume root: no walk, no extra frame
            return self.root.entries.get(comps[0])
        if not comps:
            return self.root
        return self._dir_of(comps).entries.get(comps[-1])

    def _file(self, comps: tuple[str, ...]) -> File:
        """A regular file to open: ``EISDIR`` for a directory, ``ELOOP`` for a symlink."""
        node = self.lookup(comps)
        if isinstance(node, File):
            return node
        if isinstance(node, Dir):
            raise posix(errno.EISDIR, self._where(comps))
        raise posix(errno.ELOOP, self._where(comps))

    # -- accounting ------------------------------------------------------------------------

    def _check_new_inode(self, comps: tuple[str, ...]) -> None:
        if self.inodes >= self.limits.max_inodes:
            raise posix(errno.EDQUOT, f"{self._where(comps)}: volume holds "
                        f"{self.limits.max_inodes} inodes")

    def _check_size(self, comps: tuple[str, ...], old: int, new: int) -> None:
        if new > self.limits.max_file_bytes:
            raise posix(errno.EFBIG, f"{self._where(comps)}: {new} bytes is over the "
                        f"{self.limits.max_file_bytes}-byte file limit")
        if new > old and self.bytes_used + new - old > self.limits.quota_bytes:
            raise posix(errno.EDQUOT, f"{self._where(comps)}: volume quota of "
                        f"{self.limits.quota_bytes} bytes")

    def _took(self, ino: int) -> None:
        self.inodes += 1
        if ino >= self.next_ino:
            self.next_ino = ino + 1

    def _dropped(self, node: Inode) -> None:
        self.inodes -= 1
        if isinstance(node, File):
            self.files -= 1
            self.bytes_used -= len(node.data)
        elif isinstance(node, Symlink):
            self.bytes_used -= node.size

    @staticmethod
    def _touch(node: Inode, now: int) -> None:
        node.mtime_ns = now
        node.ctime_ns = now

    # -- reads -----------------------------------------------------------------------------

    def listdir(self, comps: tuple[str, ...]) -> list[str]:
        node = self.lookup(comps)
        if isinstance(node, Dir):
            return sorted(node.entries)
        code = errno.ELOOP if isinstance(node, Symlink) else errno.ENOTDIR
        raise posix(code, self._where(comps))

    def read_file(self, comps: tuple[str, ...], max_bytes: int = 2**63) -> bytes:
        """The whole file; ``E2BIG`` (before a byte is copied) if over ``max_bytes``."""
        data = self._file(comps).data
        self._fits(comps, len(data), max_bytes)
        return data if type(data) is bytes else bytes(data)

    def pread(self, comps: tuple[str, ...], offset: int, size: int,
              max_bytes: int = 2**63) -> bytes:
        node = self.lookup(comps)
        if isinstance(node, Symlink):
            raise posix(errno.ELOOP, self._where(comps))
        if offset < 0 or size < 0:
            raise posix(errno.EINVAL, f"negative offset or size for {self._where(comps)}")
        if isinstance(node, Dir):
            raise posix(errno.EISDIR, self._where(comps))
        data = cast(File, node).data  # neither dir nor symlink
        self._fits(comps, max(0, min(size, len(data) - offset)), max_bytes)
        # Slicing clamps to the data: a huge size allocates only what the file holds.
        # One copy: a bytearray's slice would be one, and bytes() of it another.
        if isinstance(data, bytearray):
            return bytes(memoryview(data)[offset:offset + size])
        return data[offset:offset + size]

    def _fits(self, comps: tuple[str, ...], size: int, max_bytes: int) -> None:
        if size > max_bytes:
            raise MessageTooBig(f"{self._where(comps)}: a {size}-byte reply is over the "
                                f"{max_bytes}-byte limit (rpc.max_message_bytes); read it "
                                f"with fs.pread in smaller pieces")

    def readlink(self, comps: tuple[str, ...]) -> str:
        node = self.lookup(comps)
        if not isinstance(node, Symlink):
            raise posix(errno.EINVAL, f"not a symlink: {self._where(comps)}")
        return node.target

    # -- mutations -------------------------------------------------------------------------

    def _parent_for_new(self, comps: tuple[str, ...]) -> Dir:
        """The directory a new entry ``comps`` goes in; EEXIST if the name is taken."""
        if not comps:
            raise posix(errno.EEXIST, self._where(comps))
        parent = self._dir_of(comps)
        if comps[-1] in parent.entries:
            raise posix(errno.EEXIST, self._where(comps))
        return parent

    def mkdir(self, comps: tuple[str, ...], perm: int, ino: int, now: int) -> None:
        parent = self._parent_for_new(comps)
        self._check_new_inode(comps)
        parent.entries[comps[-1]] = Dir(ino, perm, now)
        parent.subdirs += 1
        self._touch(parent, now)
        self._took(ino)

    def rmdir(self, comps: tuple[str, ...], now: int) -> None:
        if not comps:
            raise posix(errno.EBUSY, f"{self._where(comps)} is a volume root")
        parent = self._dir_of(comps)
        node = parent.entries.get(comps[-1])
        if node is None:
            raise posix(errno.ENOENT, self._where(comps))
        if not isinstance(node, Dir):
            raise posix(errno.ENOTDIR, self._where(comps))
        if node.entries:
            raise posix(errno.ENOTEMPTY, self._where(comps))
        del parent.entries[comps[-1]]
        parent.subdirs -= 1
        self._touch(parent, now)
        self._dropped(node)

    def write_file(self, comps: tuple[str, ...], data: bytes, ino: int, now: int) -> File:
        """Create or replace a file's whole content (``O_CREAT|O_TRUNC`` + write, atomic);
        the file.  The most frequent case is tested first: a file that exists, at the
        volume root."""
        if len(comps) == 1:
            parent = self.root
        elif comps:
            parent = self._dir_of(comps)
        else:
            raise posix(errno.EISDIR, self._where(comps))
        node = parent.entries.get(comps[-1])
        if isinstance(node, File):
            old, new = len(node.data), len(data)
            if new > old or new > self.limits.max_file_bytes:  # else nothing to refuse
                self._check_size(comps, old, new)
            self.bytes_used += new - old
            node.data = data
            node.mtime_ns = node.ctime_ns = now
            return node
        if node is None:
            self._check_new_inode(comps)
            self._check_size(comps, 0, len(data))
            made = parent.entries[comps[-1]] = File(ino, FILE_PERM, now, data)
            self._touch(parent, now)
            self._took(ino)
            self.files += 1
            self.bytes_used += len(data)
            return made
        if isinstance(node, Dir):
            raise posix(errno.EISDIR, self._where(comps))
        raise posix(errno.ELOOP, self._where(comps))

    def pwrite(self, comps: tuple[str, ...], offset: int, data: bytes, now: int) -> int:
        """Write ``data`` at ``offset`` of an existing file; past the end leaves zeros."""
        node = self._file(comps)
        if offset < 0:
            raise posix(errno.EINVAL, f"negative offset for {self._where(comps)}")
        if not data:
            return 0  # Linux: a zero-length write changes nothing, not even mtime
        old = len(node.data)
        end = offset + len(data)
        self._check_size(comps, old, max(old, end))
        buf = node.data
        if offset == old and (isinstance(buf, Chunks) or len(data) >= BIG
                              and not isinstance(buf, Sparse)):
            if not isinstance(buf, Chunks):
                buf = node.data = Chunks([buf])
            buf.append(data)  # an append of a stream: kept, not copied
        else:
            if isinstance(buf, Chunks):
                buf = node.data = buf.joined()
            if offset > old and not isinstance(buf, Sparse):
                buf = node.data = Sparse.from_bytes(buf)  # a hole: never zeros in memory
            if isinstance(buf, Sparse):
                buf.write(offset, data)
            else:
                if not isinstance(buf, bytearray):
                    buf = node.data = bytearray(buf)
                buf[offset:end] = data
        self.bytes_used += len(buf) - old
        self._touch(node, now)
        return len(data)

    def truncate(self, comps: tuple[str, ...], size: int, now: int) -> None:
        if size < 0:
            raise posix(errno.EINVAL, f"negative size for {self._where(comps)}")
        node = self._file(comps)
        old = len(node.data)
        if size == old:
            return  # POSIX: times move only when the size changes
        self._check_size(comps, old, size)
        buf = node.data
        if isinstance(buf, Sparse):
            buf.truncate(size)
        elif size < old:
            node.data = buf[:size]  # a copy of what is kept only (O_TRUNC: nothing)
        else:  # a hole: never zeros in memory
            sparse = node.data = Sparse.from_bytes(
                buf.joined() if isinstance(buf, Chunks) else buf)
            sparse.truncate(size)
        self.bytes_used += size - old
        self._touch(node, now)

    def unlink(self, comps: tuple[str, ...], now: int) -> None:
        if not comps:
            raise posix(errno.EISDIR, self._where(comps))
        parent = self._dir_of(comps)
        node = parent.entries.get(comps[-1])
        if node is None:
            raise posix(errno.ENOENT, self._where(comps))
        if isinstance(node, Dir):
            raise posix(errno.EISDIR, self._where(comps))
        del parent.entries[comps[-1]]
        self._touch(parent, now)
        self._dropped(node)

    def rename(self, src: tuple[str, ...], dst: tuple[str, ...], now: int) -> None:
        """Move ``src`` to ``dst`` atomically, replacing ``dst`` as Linux's rename(2) does."""
        if not src or not dst:
            raise posix(errno.EBUSY, f"cannot rename a volume root: {self._where(src)}")
        sparent = self._dir_of(src)
        dparent = self._dir_of(dst)
        node = sparent.entries.get(src[-1])
        if node is None:
            raise posix(errno.ENOENT, self._where(src))
        target = dparent.entries.get(dst[-1])
        if sparent is not dparent:
            ssrc, sdp = len(src), len(dst) - 1
            if sdp >= ssrc and dst[:ssrc] == src:
                raise posix(errno.EINVAL, f"cannot move {self._where(src)} into itself")
            if len(src) - 1 >= len(dst) and src[:len(dst)] == dst:
                raise posix(errno.ENOTEMPTY, self._where(dst))
        if target is node:
            return  # the same inode: Linux does nothing
        if target is not None:
            if isinstance(node, Dir):
                if not isinstance(target, Dir):
                    raise posix(errno.ENOTDIR, self._where(dst))
                if target.entries:
                    raise posix(errno.ENOTEMPTY, self._where(dst))
            elif isinstance(target, Dir):
                raise posix(errno.EISDIR, self._where(dst))
        del sparent.entries[src[-1]]
        if target is not None:
            if isinstance(target, Dir):
                dparent.subdirs -= 1
            self._dropped(target)
        dparent.entries[dst[-1]] = node
        if isinstance(node, Dir):
            sparent.subdirs -= 1
            dparent.subdirs += 1
        self._touch(sparent, now)
        self._touch(dparent, now)
        node.ctime_ns = now

    def symlink(self, target: str, comps: tuple[str, ...], ino: int, now: int) -> None:
        parent = self._parent_for_new(comps)
        self._check_new_inode(comps)
        link = Symlink(ino, now, target)
        if self.bytes_used + link.size > self.limits.quota_bytes:
            raise posix(errno.EDQUOT, f"{self._where(comps)}: volume quota of "
                        f"{self.limits.quota_bytes} bytes")
        parent.entries[comps[-1]] = link
        self._touch(parent, now)
        self._took(ino)
        self.bytes_used += link.size

    def chmod(self, comps: tuple[str, ...], perm: int, now: int) -> None:
        node = self.lookup(comps)
        if isinstance(node, Symlink):
            raise posix(errno.ELOOP, self._where(comps))
        node.perm = perm
        node.ctime_ns = now

    def utime(self, comps: tuple[str, ...], mtime_ns: int, now: int) -> None:
        node = self.lookup(comps)
        node.mtime_ns = mtime_ns
        node.ctime_ns = now


def stat_of(node: Inode) -> dict[str, Any]:
    """The ``fs.stat`` result; ``mode`` carries the type bits as ``st_mode`` does."""
    if isinstance(node, File):
        kind, fmt, size, nlink = "file", statmod.S_IFREG, len(node.data), 1
    elif isinstance(node, Dir):
        kind, fmt, size, nlink = "dir", statmod.S_IFDIR, len(node.entries), 2 + node.subdirs
    else:
        assert isinstance(node, Symlink)
        kind, fmt, size, nlink = "symlink", statmod.S_IFLNK, node.size, 1
    return {"type": kind, "size": size, "mode": fmt | node.perm, "nlink": nlink,
            "ino": node.ino, "mtime_ns": node.mtime_ns, "ctime_ns": node.ctime_ns}
