"""A plain pyfuse3 passthrough of a local directory: the FUSE floor for mount_bench.py.

The same binding, mode (asyncio on uvloop) and options as ``kernelfarm mount``, and the
same kernel caching (1 s attribute and entry timeouts, page cache dropped at open, no
writeback cache), but every operation is one local system call on the directory below:
what any Python FUSE file system pays before doing any work of its own.  Inode numbers are
the local ones; a path per inode is kept as pyfuse3's passthrough example does.

    python benchmarks/passthrough_fs.py SOURCE_DIR MOUNTPOINT
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from typing import Any, Sequence

import pyfuse3
import pyfuse3.asyncio
import uvloop

TIMEOUT_S = 1.0


class Passthrough(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.fds: dict[int, int] = {}

    def _path(self, ino: int) -> str:
        return self.paths[ino]

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self.paths[parent], os.fsdecode(name))

    def _attrs(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        ino = pyfuse3.ROOT_INODE if path == self.paths[pyfuse3.ROOT_INODE] else st.st_ino
        self.paths[ino] = path
        attrs = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                     "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(attrs, name, getattr(st, name))
        attrs.st_ino = ino
        attrs.entry_timeout = attrs.attr_timeout = TIMEOUT_S
        return attrs

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        return self._attrs(self._child(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass  # paths are kept for the benchmark's short life

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self._path(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        try:
            if fields.update_size:
                os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, attr.st_mode & 0o7777)
            if fields.update_mtime:
                os.utime(path, ns=(attr.st_atime_ns, attr.st_mtime_ns),
                         follow_symlinks=False)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return self._attrs(path)

    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return os.fsencode(os.readlink(self._path(inode)))

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        names = sorted(os.listdir(self._path(fh)))
        for index, name in enumerate(names[start_id:], start_id + 1):
            attrs = self._attrs(os.path.join(self._path(fh), name))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index):
                return

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        self._call(os.mkdir, path, mode)
        return self._attrs(path)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._call(os.rmdir, self._child(parent_inode, name))

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._call(os.unlink, self._child(parent_inode, name))

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        src = self._child(parent_inode_old, name_old)
        dst = self._child(parent_inode_new, name_new)
        self._call(os.rename, src, dst)
        self._attrs(dst)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        self._call(os.symlink, os.fsdecode(target), path)
        return self._attrs(path)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fd = self._call(os.open, self._path(inode), flags & ~os.O_CREAT)
        self.fds[fd] = inode
        return pyfuse3.FileInfo(fh=fd, keep_cache=False)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        fd = self._call(os.open, path, flags | os.O_CREAT | os.O_TRUNC, mode)
        attrs = self._attrs(path)
        self.fds[fd] = attrs.st_ino
        return pyfuse3.FileInfo(fh=fd, keep_cache=False), attrs

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    async def flush(self, fh: int) -> None:
        pass

    async def fsync(self, fh: int, datasync: bool) -> None:
        os.fdatasync(fh) if datasync else os.fsync(fh)

    async def release(self, fh: int) -> None:
        self.fds.pop(fh, None)
        os.close(fh)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(data, name, getattr(st, name))
        return data

    @staticmethod
    def _call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None


async def serve(source: str, mountpoint: str) -> None:
    pyfuse3.asyncio.enable()
    pyfuse3.init(Passthrough(source), mountpoint,
                 set(pyfuse3.default_options) | {"fsname=passthrough"})
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, pyfuse3.terminate)
    try:
        await pyfuse3.main()
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])))
