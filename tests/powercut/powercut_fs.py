"""A FUSE file system that forgets what was not fsynced when told to: a power cut for tests.

Run as its own process (``python powercut_fs.py BACKING GRAVEYARD MOUNTPOINT CONTROL``).
It passes every operation through to the directory BACKING, except that it holds back
what a real disk could lose in a power cut, as LazyFS does:

- **file data**: writes and truncates go to an in-memory overlay per inode; reads see the
  overlay on top of the backing file.  ``fsync``/``fdatasync`` of the file applies the
  overlay to the backing file.  A cut drops every overlay.
- **names**: a create, mkdir, unlink, rmdir or rename is done on BACKING at once (so
  every later call sees it) but logged with an undo step.  It becomes durable when every
  directory it changed is fsynced (``fsyncdir``); a cut undoes, newest first, every change
  not yet durable.  Unlinked and replaced entries are parked in GRAVEYARD (on the same
  host file system) until their removal is durable, so an undo can bring them back.
- **faults on command**: ``fsync`` and ``fsyncdir`` fail with ``EIO``; writes that would
  grow the data past a capacity fail with ``ENOSPC`` (and ``statfs`` reports it).

This is a stricter model than ext4 (where an fsync commits every earlier metadata change
too): it is the POSIX promise, and code that is durable here is durable there.  Mode and
time changes pass straight through (recovery does not rely on them).

The control socket CONTROL takes one line per connection and answers one line:
``freeze`` (the power goes: every call fails with EIO), ``cut`` (drop everything not
durable, and power comes back), ``fail-fsync on|off``, ``hold-fsync on|off|next`` (file
fsyncs wait until it is turned off, or ``next`` lets those waiting go and holds the
later ones: a slow disk, for ordering tests), ``capacity
BYTES|none``, ``stats`` (JSON).  Every FUSE handler here but a held fsync runs to
completion without awaiting, so a command never interleaves with a half-done operation
(a held fsync does its work after the wait, as if it had just arrived).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import socket
import stat as statmod
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import pyfuse3
import trio

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


@dataclass
class Node:
    """An inode the kernel knows: an ``O_PATH`` descriptor (it follows renames) and the
    kernel's lookup count."""

    fd: int
    lookups: int = 0


@dataclass
class Overlay:
    """A file's data not yet fsynced: its size, how far the backing bytes still count
    (``cut``: a truncate hides what lies beyond), and the writes since, in order."""

    size: int
    cut: int
    writes: list[tuple[int, bytearray]] = field(default_factory=list)

    def write(self, offset: int, data: bytes) -> None:
        if self.writes:
            last_off, last = self.writes[-1]
            if last_off + len(last) == offset:  # appends coalesce
                last += data
                self.size = max(self.size, offset + len(data))
                return
        self.writes.append((offset, bytearray(data)))
        self.size = max(self.size, offset + len(data))

    def truncate(self, size: int) -> None:
        self.cut = min(self.cut, size)
        kept = []
        for off, data in self.writes:
            if off < size:
                kept.append((off, data[:size - off]))
        self.writes = kept
        self.size = size

    def read(self, fd: int, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        buf = bytearray(end - offset)
        if offset < self.cut:
            base = os.pread(fd, min(end, self.cut) - offset, offset)
            buf[:len(base)] = base
        for off, data in self.writes:
            lo, hi = max(offset, off), min(end, off + len(data))
            if lo < hi:
                buf[lo - offset:hi - offset] = data[lo - off:hi - off]
        return bytes(buf)

    def apply(self, fd: int) -> None:
        os.ftruncate(fd, self.cut)
        os.ftruncate(fd, self.size)
        for off, data in self.writes:
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, off)
                view, off = view[written:], off + written


@dataclass
class Change:
    """A name change not yet durable: the directories whose fsync makes it so, how to
    undo it, and what to clean up once it is durable."""

    dirs: set[int]
    undo: Callable[[], None]
    done: Callable[[], None]


class PowerCutFS(pyfuse3.Operations):
    def __init__(self, backing: str, graveyard: str) -> None:
        super().__init__()
        self.root_fd = os.open(backing, os.O_PATH | os.O_DIRECTORY)
        self.root_ino = os.fstat(self.root_fd).st_ino
        self.grave_fd = os.open(graveyard, os.O_RDONLY | os.O_DIRECTORY)
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(self.root_fd, 1)}
        self.overlays: dict[int, Overlay] = {}
        self.changes: list[Change] = []
        self.files: dict[int, tuple[int, int, bool]] = {}   # fh -> (ino, fd, append)
        self.dirs: dict[int, tuple[int, list[bytes]]] = {}  # fh -> (ino, names)
        self.handles = itertools.count(1)
        self.graves = itertools.count(1)
        self.fail_fsync = False
        self.frozen = False  # power gone: every call fails until the cut is done
        self.capacity: int | None = None
        self.used = 0
        self.counts = {"cuts": 0, "writes_dropped": 0, "changes_undone": 0, "fsyncs": 0,
                       "eio": 0, "enospc": 0, "fsyncs_held": 0}
        self.hold: trio.Event | None = None  # set: file fsyncs wait until it is released
        self.used = self._measure()

    # -- inodes ------------------------------------------------------------------------------

    def _power(self) -> None:
        if self.frozen:
            raise fail(errno.EIO)

    def _ino(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise fail(errno.ESTALE)
        return node

    def _proc(self, ino: int) -> str:
        return f"/proc/self/fd/{self._node(ino).fd}"

    def _attrs(self, ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = ino
        attrs.generation = 0
        attrs.entry_timeout = 0
        attrs.attr_timeout = 0
        attrs.st_mode = st.st_mode
        attrs.st_nlink = st.st_nlink
        attrs.st_uid = st.st_uid
        attrs.st_gid = st.st_gid
        attrs.st_rdev = st.st_rdev
        overlay = self.overlays.get(ino)
        attrs.st_size = overlay.size if overlay is not None else st.st_size
        attrs.st_blksize = 4096
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_atime_ns = st.st_atime_ns
        attrs.st_mtime_ns = st.st_mtime_ns
        attrs.st_ctime_ns = st.st_ctime_ns
        return attrs

    def _entry(self, parent_fd: int, name: bytes, count: bool = True
               ) -> pyfuse3.EntryAttributes:
        """The attributes of ``name`` in a directory; ``count``: one more kernel lookup."""
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None
        ino = self._ino(st)
        if count:
            node = self.nodes.get(ino)
            if node is None:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent_fd)
                node = self.nodes[ino] = Node(fd)
            node.lookups += 1
        return self._attrs(ino, st)

    def _stat(self, ino: int) -> os.stat_result:
        try:
            return os.stat(self._node(ino).fd)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None

    def _overlay(self, ino: int) -> Overlay:
        overlay = self.overlays.get(ino)
        if overlay is None:
            size = self._stat(ino).st_size
            overlay = self.overlays[ino] = Overlay(size, size)
        return overlay

    def _size(self, ino: int) -> int:
        overlay = self.overlays.get(ino)
        return overlay.size if overlay is not None else self._stat(ino).st_size

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any
                     ) -> pyfuse3.EntryAttributes:
        self._power()
        return self._entry(self._node(parent_inode).fd, name)

    async def forget(self, inode_list: Any) -> None:
        for ino, count in inode_list:
            node = self.nodes.get(ino)
            if node is None or ino == pyfuse3.ROOT_INODE:
                continue
            node.lookups -= count
            if node.lookups <= 0:
                del self.nodes[ino]
                os.close(node.fd)

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        self._power()
        return self._attrs(inode, self._stat(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        self._power()
        path = self._proc(inode)
        try:
            if fields.update_size:
                self._resize(inode, attr.st_size)
            if fields.update_mode:
                os.chmod(path, statmod.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(path, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1)
            if fields.update_mtime or fields.update_atime:
                st = self._stat(inode)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None
        return self._attrs(inode, self._stat(inode))

    def _resize(self, ino: int, size: int) -> None:
        overlay = self._overlay(ino)
        self._grow(size - overlay.size)
        overlay.truncate(size)

    def _grow(self, delta: int) -> None:
        if delta > 0 and self.capacity is not None and self.used + delta > self.capacity:
            self.counts["enospc"] += 1
            raise fail(errno.ENOSPC)
        self.used += delta

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        real = os.statvfs(f"/proc/self/fd/{self.root_fd}")
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        if self.capacity is None:
            data.f_blocks, data.f_bfree = real.f_blocks, real.f_bfree
            data.f_bavail = real.f_bavail
            data.f_bsize, data.f_frsize = real.f_bsize, real.f_frsize
        else:
            data.f_blocks = self.capacity // 4096
            data.f_bfree = data.f_bavail = max(0, self.capacity - self.used) // 4096
        data.f_files, data.f_ffree, data.f_favail = real.f_files, real.f_ffree, real.f_favail
        data.f_namemax = 255
        return data

    # -- files -------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        self._power()
        try:
            fd = os.open(self._proc(inode), os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None
        if flags & os.O_TRUNC:
            self._resize(inode, 0)
        return self._file(inode, fd, flags)

    def _file(self, ino: int, fd: int, flags: int) -> pyfuse3.FileInfo:
        fh = next(self.handles)
        self.files[fh] = (ino, fd, bool(flags & os.O_APPEND))
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._power()
        parent = self._node(parent_inode).fd
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         statmod.S_IMODE(mode), dir_fd=parent)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise fail(errno.EEXIST) from None
            attrs = self._entry(parent, name)
            return await self.open(attrs.st_ino, flags, ctx), attrs
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None
        attrs = self._entry(parent, name)
        self._log_created(parent_inode, name, attrs.st_ino)
        return self._file(attrs.st_ino, fd, flags), attrs

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self._power()
        ino, fd, _ = self.files[fh]
        overlay = self.overlays.get(ino)
        if overlay is None:
            return os.pread(fd, size, off)
        return overlay.read(fd, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._power()
        ino, _, append = self.files[fh]
        overlay = self._overlay(ino)
        if append:
            off = overlay.size
        self._grow(max(0, off + len(buf) - overlay.size))  # an overwrite takes no room
        overlay.write(off, buf)
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        _, fd, _ = self.files.pop(fh)
        os.close(fd)

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._power()
        if self.hold is not None:  # a slow disk, on command: the caller waits here
            self.counts["fsyncs_held"] += 1
            await self.hold.wait()
            self._power()
        if self.fail_fsync:
            self.counts["eio"] += 1
            raise fail(errno.EIO)
        ino, fd, _ = self.files[fh]
        self.counts["fsyncs"] += 1
        overlay = self.overlays.pop(ino, None)
        if overlay is not None:
            overlay.apply(fd)

    # -- directories -------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        self._power()
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(self._proc(inode)))
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None
        fh = next(self.handles)
        self.dirs[fh] = (inode, names)
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        ino, names = self.dirs[fh]
        parent = self._node(ino).fd
        for index in range(start_id, len(names)):
            try:
                attrs = self._entry(parent, names[index], count=False)
            except pyfuse3.FUSEError:
                continue  # gone since opendir
            if not pyfuse3.readdir_reply(token, names[index], attrs, index + 1):
                return
            self._entry(parent, names[index])

    async def releasedir(self, fh: int) -> None:
        del self.dirs[fh]

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._power()
        if self.fail_fsync:
            self.counts["eio"] += 1
            raise fail(errno.EIO)
        self.counts["fsyncs"] += 1
        ino = self.dirs[fh][0]
        pending = []
        for change in self.changes:
            change.dirs.discard(ino)
            if change.dirs:
                pending.append(change)
            else:
                change.done()
        self.changes = pending

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        self._power()
        parent = self._node(parent_inode).fd
        try:
            os.mkdir(name, statmod.S_IMODE(mode), dir_fd=parent)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None
        attrs = self._entry(parent, name)
        self._log_created(parent_inode, name, attrs.st_ino)
        return attrs

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        """Sockets and FIFOs (a farm binds unix sockets in its data dir)."""
        self._power()
        parent = self._node(parent_inode).fd
        try:
            os.mknod(name, mode, rdev, dir_fd=parent)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None
        attrs = self._entry(parent, name)
        self._log_created(parent_inode, name, attrs.st_ino)
        return attrs

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._power()
        parent = self._node(parent_inode).fd
        st = self._lstat(parent, name)
        if statmod.S_ISDIR(st.st_mode):
            raise fail(errno.EISDIR)
        self.used -= self._size(self._ino(st)) if self._ino(st) in self.nodes else st.st_size
        self._bury(parent_inode, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._power()
        parent = self._node(parent_inode).fd
        st = self._lstat(parent, name)
        if not statmod.S_ISDIR(st.st_mode):
            raise fail(errno.ENOTDIR)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent)
        try:
            if os.listdir(fd):
                raise fail(errno.ENOTEMPTY)
        finally:
            os.close(fd)
        self._bury(parent_inode, name)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        self._power()
        if flags & RENAME_EXCHANGE:
            raise fail(errno.EINVAL)
        old = self._node(parent_inode_old).fd
        new = self._node(parent_inode_new).fd
        src = self._lstat(old, name_old)
        try:
            dst: os.stat_result | None = os.stat(name_new, dir_fd=new, follow_symlinks=False)
        except FileNotFoundError:
            dst = None
        grave: bytes | None = None
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise fail(errno.EEXIST)
            if dst.st_ino == src.st_ino:
                return
            if statmod.S_ISDIR(src.st_mode) and not statmod.S_ISDIR(dst.st_mode):
                raise fail(errno.ENOTDIR)
            if not statmod.S_ISDIR(src.st_mode) and statmod.S_ISDIR(dst.st_mode):
                raise fail(errno.EISDIR)
            if statmod.S_ISDIR(dst.st_mode):
                fd = os.open(name_new, os.O_RDONLY | os.O_DIRECTORY, dir_fd=new)
                try:
                    if os.listdir(fd):
                        raise fail(errno.ENOTEMPTY)
                finally:
                    os.close(fd)
            grave = self._grave_name()
            os.rename(name_new, grave, src_dir_fd=new, dst_dir_fd=self.grave_fd)
        try:
            os.rename(name_old, name_new, src_dir_fd=old, dst_dir_fd=new)
        except OSError as exc:
            if grave is not None:
                os.rename(grave, name_new, src_dir_fd=self.grave_fd, dst_dir_fd=new)
            raise fail(exc.errno or errno.EIO) from None
        old_dir, new_dir = os.dup(old), os.dup(new)

        def undo() -> None:
            os.rename(name_new, name_old, src_dir_fd=new_dir, dst_dir_fd=old_dir)
            if grave is not None:
                os.rename(grave, name_new, src_dir_fd=self.grave_fd, dst_dir_fd=new_dir)

        def done() -> None:
            os.close(old_dir)
            os.close(new_dir)
            if grave is not None:
                self._purge(grave)

        self.changes.append(Change({parent_inode_old, parent_inode_new}, undo, done))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        raise fail(errno.EINVAL)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        raise fail(errno.EPERM)  # the farm never makes host symlinks

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise fail(errno.EPERM)

    # -- the change log ----------------------------------------------------------------------

    def _lstat(self, parent: int, name: bytes) -> os.stat_result:
        try:
            return os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None

    def _grave_name(self) -> bytes:
        return b"g%d" % next(self.graves)

    def _purge(self, grave: bytes) -> None:
        """Delete a parked entry: a tree, or anything else (a unix socket too, which
        ``rmtree`` would try to open: ENXIO)."""
        try:
            st = os.stat(grave, dir_fd=self.grave_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if statmod.S_ISDIR(st.st_mode):
            shutil.rmtree(grave, dir_fd=self.grave_fd)
        else:
            os.unlink(grave, dir_fd=self.grave_fd)

    def _log_created(self, parent_inode: int, name: bytes, ino: int) -> None:
        parent = os.dup(self._node(parent_inode).fd)

        def undo() -> None:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if self._ino(st) != ino:
                return  # the name was reused by a change that is durable: keep that
            if statmod.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)

        self.changes.append(Change({parent_inode}, undo, lambda: os.close(parent)))

    def _bury(self, parent_inode: int, name: bytes) -> None:
        """Unlink or rmdir ``name``, keeping it in the graveyard until that is durable."""
        parent = self._node(parent_inode).fd
        grave = self._grave_name()
        try:
            os.rename(name, grave, src_dir_fd=parent, dst_dir_fd=self.grave_fd)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO) from None
        kept = os.dup(parent)

        def undo() -> None:
            os.rename(grave, name, src_dir_fd=self.grave_fd, dst_dir_fd=kept)

        def done() -> None:
            os.close(kept)
            self._purge(grave)

        self.changes.append(Change({parent_inode}, undo, done))

    # -- commands ----------------------------------------------------------------------------

    def cut(self) -> None:
        """The power cut: every overlay dropped, every name change not durable undone."""
        self.counts["cuts"] += 1
        self.counts["writes_dropped"] += sum(len(o.writes) for o in self.overlays.values())
        self.overlays.clear()
        for change in reversed(self.changes):
            try:
                change.undo()
                self.counts["changes_undone"] += 1
            except OSError as exc:
                print(f"powercut: undo failed: {exc}", file=sys.stderr)
            change.done()
        self.changes = []
        for grave in os.listdir(self.grave_fd):
            self._purge(os.fsencode(grave))
        self.used = self._measure()

    def _measure(self) -> int:
        total = 0
        for where, _dirs, files in os.walk(f"/proc/self/fd/{self.root_fd}"):
            for name in files:
                try:
                    total += os.lstat(os.path.join(where, name)).st_size
                except OSError:
                    pass
        return total

    def _release_held(self) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.set()

    def command(self, line: str) -> str:
        words = line.split()
        if words == ["cut"]:
            self.cut()
            self.frozen = False
        elif words == ["freeze"]:
            self.frozen = True
            self._release_held()  # they fail: the power is gone
        elif words[:1] == ["hold-fsync"] and len(words) == 2 \
                and words[1] in ("on", "off", "next"):
            if words[1] != "on":
                self._release_held()
            if words[1] != "off":
                self.hold = self.hold or trio.Event()
        elif words[:1] == ["fail-fsync"] and len(words) == 2 and words[1] in ("on", "off"):
            self.fail_fsync = words[1] == "on"
        elif words[:1] == ["capacity"] and len(words) == 2:
            self.capacity = None if words[1] == "none" else int(words[1])
        elif words == ["stats"]:
            return json.dumps({**self.counts, "used": self.used, "capacity": self.capacity,
                               "pending_changes": len(self.changes),
                               "unsynced_files": len(self.overlays)})
        else:
            return f"error: unknown command {line.strip()!r}"
        return "ok"


async def serve_control(fs: PowerCutFS, path: str) -> None:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound aside and renamed into place once listening: the tests take the path's
    # existence as "ready", and a bound socket that does not listen yet refuses connects.
    building = path + ".building"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(building)
    await listener.bind(building)
    listener.listen(8)
    os.rename(building, path)
    while True:
        conn, _ = await listener.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = await conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            try:
                reply = fs.command(data.decode())
            except Exception as exc:  # a bad command must not take the file system down
                reply = f"error: {exc}"
            await conn.send((reply + "\n").encode())


async def run(fs: PowerCutFS, control: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_control, fs, control)

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    fs._release_held()  # a held fsync would keep the mount busy
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    backing, graveyard, mountpoint, control = sys.argv[1:5]
    fs = PowerCutFS(backing, graveyard)
    options = set(pyfuse3.default_options) | {"fsname=powercut"}
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(run, fs, control)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
