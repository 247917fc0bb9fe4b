"""The FUSE operations of ``kernelfarm mount``, each mapped onto the farm's path-based fs.

The mount is a client of the farm like any other: it holds no farm state, only what FUSE
needs on this side: inode numbers for the paths the kernel knows (:mod:`.inodes`), and
the open files with their writes not yet on the farm (:mod:`.openfiles`).  Every handler
awaits the farm through the asyncio client, so many FUSE requests are in flight at once,
each pipelined to the kernel that owns its volume; a slow volume holds only its own
requests.

Calls that belong together go out back to back without waiting (``mkdir`` sends
``fs.mkdir``, the new directory's ``fs.stat`` and its parent's at once): the kernel serves
one connection in order, so they cost one round trip.  If a later one failed while the
first succeeded (a retry reordered them), it is sent again on its own.

Operations that must see a file's data on the farm first wait for its pending writes
(``lookup``, ``read``, ``setattr``, ``fsync``, ``flush``); renames and removals wait for
every pending write, since a pending write names its file by path.  A write the farm
refused is reported by the file's next ``write``, ``flush`` (close) or ``fsync`` only:
the others wait without taking the error (it would be lost to the program's close).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat as statmod
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import pyfuse3

from kernelfarm.mount.attrcache import AttrCache, Stat
from kernelfarm.mount.attrs import (
    Caching, entry_attributes, fuse_errors, no_entry, plain_name,
)
from kernelfarm.mount.inodes import ROOT_INO, InodeTable
from kernelfarm.mount.listings import Listings
from kernelfarm.mount.openfiles import OpenFiles
from kernelfarm.mount.statahead import StatAhead

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
INFLIGHT_BYTES = 64 * 1024 * 1024
READDIR_BATCH = 128
INT64 = 2**63
HIDDEN_PREFIX = ".kfmount-unlinked-"
"""An unlinked file that is still open is renamed to this prefix + its inode number and
removed at its last close (as NFS clients do with ``.nfsXXXX``)."""


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)  # undecodable bytes become lone surrogates: the farm's EINVAL


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


async def _outcome(task: asyncio.Future[Any]) -> Any:
    """``task``'s result, or the exception it raised (as ``gather(...,
    return_exceptions=True)`` gives, a step of the loop sooner)."""
    try:
        return await task
    except Exception as exc:
        return exc


@dataclass
class DirListing:
    ino: int
    names: list[str]


class FarmOperations(pyfuse3.Operations):
    """No xattr handler on purpose: pyfuse3's defaults answer ``ENOSYS``, after which the
    kernel answers every xattr call ``ENOTSUP`` itself without asking again.  Answering
    ``ENOTSUP`` here instead cost a trip to this process per write of every file (the
    kernel looks for ``security.capability`` before each)."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, fs: Any, *, read_only: bool = False, caching: Caching | None = None,
                 chunk_bytes: int = CHUNK_BYTES, inflight_bytes: int = INFLIGHT_BYTES,
                 on_init: Callable[[], object] | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.on_init = on_init
        self.read_only = read_only
        self.caching = caching or Caching()
        self.inodes = InodeTable()
        self.files = OpenFiles(fs, self.inodes, chunk_bytes, inflight_bytes)
        self.uid, self.gid = os.getuid(), os.getgid()
        self.cache = AttrCache(self.caching.attr_timeout)
        self.names = Listings(self.caching.entry_timeout)
        self.ahead_names = StatAhead()
        self.listings: dict[int, DirListing] = {}

    def init(self) -> None:
        """pyfuse3 calls this while it answers the kernel's ``INIT``, which may only lower
        what the mount set before (its read-ahead window): ``on_init`` runs once that
        answer is out, in a later step of the loop."""
        if self.on_init is not None:
            asyncio.get_running_loop().call_soon(self.on_init)

    # -- helpers ------------------------------------------------------------------------

    def _attrs(self, ino: int, st: Stat, version: int | None = None
               ) -> pyfuse3.EntryAttributes:
        """The answer for ``ino``, kept as its last stat (fresh if ``version``, read
        before the stat was sent, is still current: see :mod:`.attrcache`)."""
        self.cache.put(ino, st, version)
        return entry_attributes(ino, st, self.uid, self.gid, self.caching)

    async def _change_in(self, parent: int, change: Awaitable[Any], *then: Awaitable[Any]
                         ) -> list[Any]:
        """``change`` to a name in directory ``parent`` and the calls ``then``, with the
        directory's stat sent right behind them (one round trip): the kernel drops its
        copy of a directory's attributes at every change in it and asks again before the
        next path walk through it; that ``getattr`` is answered from this stat.  It is
        taken as fresh only if every call was answered before it (a retried call may
        have landed after it)."""
        self.cache.changed(parent)
        version = self.cache.version(parent)
        calls = (change, *then)
        answered: list[Any] = []

        async def in_order(call: Awaitable[Any]) -> Any:
            result = await call
            answered.append(result)
            return result

        async def parent_stat() -> tuple[Stat, bool]:
            st = await self.fs.stat(self._path(parent))
            return st, len(answered) == len(calls)

        *results, stat = await self._together(*map(in_order, calls), parent_stat())
        if not isinstance(stat, BaseException) and stat[1]:
            self.cache.put(parent, stat[0], version)
        return results

    def _path(self, ino: int) -> str:
        return self.inodes.path(ino)

    def _writable(self) -> None:
        if self.read_only:
            raise _fail(errno.EROFS)

    async def _together(self, first: Awaitable[Any], *then: Awaitable[Any]) -> list[Any]:
        """Send calls back to back (one round trip); the first one's failure is raised.

        ``first`` is sent in the caller's own step, the others a step later (each as a
        task), so ``first`` goes out ahead of them and of every call started after this
        one: a create not waited for is on its way before the file's first write."""
        rest = [asyncio.ensure_future(call) for call in then]
        try:
            head = await first
        finally:
            results = [await _outcome(task) for task in rest]
        return [head, *results]

    async def _entry(self, parent: int, name: str, path: str, st: Any
                     ) -> pyfuse3.EntryAttributes:
        """The reply for a new or looked-up name; ``st`` may be a failed stat to redo."""
        if isinstance(st, BaseException):
            st = await self.fs.stat(path)
        return self._attrs(self.inodes.lookup(parent, name), st)

    # -- names --------------------------------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        text = _name(name)
        left = self.names.absent(parent_inode, text) if plain_name(name) else None
        if left is not None:
            return no_entry(left)
        path = self.inodes.child_path(parent_inode, text)
        known = self.inodes.known(parent_inode, text)
        if known is not None:
            await self.files.settle(known)
            fresh = self.cache.fresh(known)
            if fresh is not None:  # fetched ahead (or just now) for this walk
                st, left = fresh
                self.inodes.lookup(parent_inode, text)
                return entry_attributes(known, st, self.uid, self.gid, self.caching, left)
        # One round trip: the name, the directory's names if worth taking again, and
        # the stats of the names a walk through the directory asks for next.
        calls: list[Awaitable[Any]] = [self.fs.stat(path)]
        listing = self.names.worth_taking(parent_inode)
        version = self.names.version(parent_inode)
        if listing:
            calls.append(self.fs.listdir(self._path(parent_inode)))
        inos = [] if known is None else self.ahead_names.plan(
            parent_inode, text, lambda count: self.inodes.after(parent_inode, text, count))
        ahead = [(ino, self._settled_version(ino)) for ino in inos]
        calls += [self.fs.stat(self._path(ino)) for ino, _ in ahead]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        if listing and not isinstance(answers[1], BaseException):
            self.names.put(parent_inode, answers[1], version)
        for (ino, settled), answer in zip(ahead, answers[1 + listing:], strict=True):
            if settled is not None and not isinstance(answer, BaseException):
                self.cache.put(ino, answer, settled)
        if isinstance(answers[0], BaseException):
            raise answers[0]
        return await self._entry(parent_inode, text, path, answers[0])

    @fuse_errors
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)
            self.cache.forget(ino)
            self.names.forget(ino)
            self.ahead_names.forget(ino)

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        # The kernel asks after every write.  While writes are still on their way the farm
        # has nothing newer to say than the last answer and the pending size (its mtime
        # moves when they land): draining or asking would cost a round trip per write.
        last = self.cache.last(inode)
        if last is not None and not self.files.idle(inode):
            return self._attrs(inode, self.files.with_pending(inode, last))
        fresh = self.cache.fresh(inode)
        if fresh is not None:
            st, left = fresh
            return entry_attributes(inode, st, self.uid, self.gid, self.caching, left)
        version = self._settled_version(inode)
        st = await self.fs.stat(self._path(inode))
        return self._attrs(inode, self.files.with_pending(inode, st), version)

    def _settled_version(self, ino: int) -> int | None:
        """The cache version for a stat about to be sent; ``None`` (the answer is never
        fresh) while writes are on their way: they move the file's mtime when they land."""
        return self.cache.version(ino) if self.files.idle(ino) else None

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        if (fields.update_uid and attr.st_uid != self.uid) or \
                (fields.update_gid and attr.st_gid != self.gid):
            raise _fail(errno.EPERM)  # the farm keeps no owner: only "no change" succeeds
        changes = fields.update_size or fields.update_mode or fields.update_mtime
        last = self.cache.last(inode)
        if not changes and last is not None:
            # chown to the same owner (cp -a, rsync -a as root), atime alone: nothing to
            # change, so no trip to the farm; the answer is as fresh as the kernel's cache.
            return self._attrs(inode, self.files.with_pending(inode, last))
        if changes:
            self._writable()
        path = self._path(inode)
        if self.files.opens.get(inode) and last is not None and not fields.update_size:
            if fields.update_mode and not fields.update_mtime:
                return self._set_behind_writes(inode, last, mode=attr.st_mode & 0o7777)
            if fields.update_mtime and not fields.update_mode \
                    and -INT64 <= attr.st_mtime_ns < INT64:
                return self._set_behind_writes(inode, last, mtime_ns=attr.st_mtime_ns)
        await self.files.settle(inode)
        self._changed(inode)
        calls: list[Callable[[], Awaitable[None]]] = []
        if fields.update_size:
            calls.append(lambda: self.fs.truncate(path, attr.st_size))
        if fields.update_mode:
            calls.append(lambda: self.fs.chmod(path, attr.st_mode & 0o7777))
        if fields.update_mtime:
            calls.append(lambda: self.fs.utime(path, attr.st_mtime_ns))
        if len(calls) == 1:  # what programs send (truncate, chmod, utimensat): one trip
            version = self.cache.version(inode)
            _, st = await self._together(calls[0](), self.fs.stat(path))
            if isinstance(st, BaseException):
                st = await self.fs.stat(path)
            return self._attrs(inode, st, version)
        for call in calls:  # in order: a later change must not happen if one failed
            await call()
        return self._attrs(inode, await self.fs.stat(path))

    def _set_behind_writes(self, inode: int, last: Stat, *, mode: int | None = None,
                           mtime_ns: int | None = None) -> pyfuse3.EntryAttributes:
        """``fchmod``/``futimens`` (or a chmod by path) of a file open in this mount: sent
        behind its writes like one (:meth:`WriteBehind.then`) and answered at once, so
        ``cp -a`` and ``rsync`` do not wait a round trip for each; ``close`` and
        ``fsync`` wait for it, and its error is reported as a write's."""
        behind = self.files.behind(inode)
        self._changed(inode)
        st = {**last, "ctime_ns": time.time_ns()}
        if mode is not None:
            behind.then(lambda: self.fs.chmod(self._path(inode), mode), ordered=False)
            st["mode"] = statmod.S_IFMT(last["mode"]) | mode
        if mtime_ns is not None:
            behind.then(lambda: self.fs.utime(self._path(inode), mtime_ns), ordered=True)
            st["mtime_ns"] = mtime_ns
        return self._attrs(inode, self.files.with_pending(inode, st))

    @fuse_errors
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return os.fsencode(await self.fs.readlink(self._path(inode)))

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: Any = None) -> bool:
        st = await self.fs.stat(self._path(inode))
        if mode & os.W_OK and self.read_only:
            raise _fail(errno.EROFS)
        return not (mode & os.X_OK) or bool(st["mode"] & 0o111) or statmod.S_ISDIR(st["mode"])

    # -- making and removing names ------------------------------------------------------

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        self._writable()
        text = _name(name)
        path = self.inodes.child_path(parent_inode, text)
        _, st = await self._change_in(parent_inode, self.fs.mkdir(path, mode & 0o7777),
                                      self.fs.stat(path))
        self.names.added(parent_inode, text)
        attrs = await self._entry(parent_inode, text, path, st)
        self.names.put(attrs.st_ino, (), self.names.version(attrs.st_ino))  # empty: made here
        return attrs

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        self._writable()
        text = _name(name)
        path = self.inodes.child_path(parent_inode, text)
        _, st = await self._change_in(parent_inode, self.fs.symlink(path, os.fsdecode(target)),
                                      self.fs.stat(path))
        self.names.added(parent_inode, text)
        return await self._entry(parent_inode, text, path, st)

    async def _make_file(self, parent: int, name: bytes, mode: int, flags: int
                         ) -> pyfuse3.EntryAttributes:
        """``open(O_CREAT)`` on the farm: ``fs.create`` makes the file with its mode, or
        (without ``O_EXCL``) opens the one another client made since the kernel's lookup,
        which ``O_TRUNC`` then empties; ``O_EXCL`` holds against every client."""
        self._writable()
        text = _name(name)
        path = self.inodes.child_path(parent, text)
        try:
            (st,) = await self._change_in(parent, self.fs.create(
                path, mode & 0o7777, bool(flags & os.O_EXCL)))
        finally:  # made, or there after all (EEXIST): either way the name is there
            self.names.added(parent, text)
        ino = self.inodes.lookup(parent, text)
        if flags & os.O_TRUNC and st["size"]:
            await self.files.settle(ino)
            self._changed(ino)
            st = (await self._together(self.fs.truncate(path, 0), self.fs.stat(path)))[1]
            if isinstance(st, BaseException):
                st = await self.fs.stat(path)
        return self._attrs(ino, st)

    def _make_file_behind(self, parent: int, text: str, mode: int, flags: int
                          ) -> pyfuse3.EntryAttributes:
        """``open(O_CREAT)`` without ``O_EXCL`` of a name a fresh listing says is not
        there: answered at once, as the new empty file it almost surely makes, while
        ``fs.create`` (emptying a file another client made meanwhile, for ``O_TRUNC``)
        goes ahead of the file's writes, all in one round trip (:meth:`WriteBehind.lead`).
        Its failure is the next ``write``'s, ``close``'s or ``fsync``'s, as for a write."""
        self._writable()
        path = self.inodes.child_path(parent, text)
        perm = mode & 0o7777
        ino = self.inodes.lookup(parent, text)
        self._changed(ino)
        self.names.added(parent, text)

        async def create() -> None:
            try:
                await self._change_in(parent, self.fs.create(
                    path, perm, False, bool(flags & os.O_TRUNC)))
            except BaseException:
                self.names.forget(parent)  # what is there now, only the farm knows
                raise

        self.files.behind(ino).lead(create)
        now = time.time_ns()
        return self._attrs(ino, {"type": "file", "size": 0, "mode": statmod.S_IFREG | perm,
                                 "nlink": 1, "ino": ino, "mtime_ns": now, "ctime_ns": now})

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        text = _name(name)
        if not flags & os.O_EXCL and plain_name(name) \
                and self.names.absent(parent_inode, text) is not None:
            attrs = self._make_file_behind(parent_inode, text, mode, flags)
        else:
            attrs = await self._make_file(parent_inode, name, mode, flags)
        return self.files.open(attrs.st_ino), attrs

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        if not statmod.S_ISREG(mode):
            raise _fail(errno.EPERM)  # no device files, FIFOs or sockets in the farm
        return await self._make_file(parent_inode, name, mode, os.O_EXCL)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
                   ) -> pyfuse3.EntryAttributes:
        raise _fail(errno.EPERM)  # no hard links: link(2)'s answer on such a file system

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._writable()
        text = _name(name)
        path = self.inodes.child_path(parent_inode, text)
        await self.files.settle_all()
        ino = self.inodes.known(parent_inode, text)
        if ino is not None and self.files.opens.get(ino):
            hidden = f"{HIDDEN_PREFIX}{ino}"
            await self._change_in(parent_inode, self.fs.rename(
                path, self.inodes.child_path(parent_inode, hidden)))
            self.names.removed(parent_inode, text)
            self.names.added(parent_inode, hidden)
            self.inodes.move(parent_inode, text, parent_inode, hidden)
            self.files.unlinked.add(ino)
            return
        await self._change_in(parent_inode, self.fs.unlink(path))
        self.names.removed(parent_inode, text)
        self.inodes.detach(parent_inode, text)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._writable()
        text = _name(name)
        await self.files.settle_all()
        await self._change_in(parent_inode, self.fs.rmdir(
            self.inodes.child_path(parent_inode, text)))
        self.names.removed(parent_inode, text)
        gone = self.inodes.known(parent_inode, text)
        if gone is not None:
            self.names.forget(gone)
        self.inodes.detach(parent_inode, text)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        self._writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fail(errno.EINVAL)  # the farm cannot swap two names atomically
        old, new = _name(name_old), _name(name_new)
        src = self.inodes.child_path(parent_inode_old, old)
        dst = self.inodes.child_path(parent_inode_new, new)
        await self.files.settle_all()
        if flags & pyfuse3.RENAME_NOREPLACE:
            try:
                await self.fs.stat(dst)
            except FileNotFoundError:
                pass
            else:
                raise _fail(errno.EEXIST)
        moved = self.inodes.known(parent_inode_old, old)
        self.cache.changed(parent_inode_old, *(() if moved is None else (moved,)))
        await self._change_in(parent_inode_new, self.fs.rename(src, dst))
        self.names.removed(parent_inode_old, old)
        self.names.added(parent_inode_new, new)
        self.inodes.move(parent_inode_old, old, parent_inode_new, new)

    # -- files --------------------------------------------------------------------------

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._writable()
        path = self._path(inode)
        if flags & os.O_TRUNC:
            await self.files.settle(inode)
            self._changed(inode)
            await self.fs.truncate(path, 0)
        return self.files.open(inode)

    def _changed(self, ino: int) -> None:
        """This mount changes the file: its attributes and blocks read ahead are stale."""
        self.cache.changed(ino)
        self.files.drop_read_ahead(ino)

    @fuse_errors
    async def read(  # type: ignore[override]  # pyfuse3 replies from any buffer
            self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        ino = self.files.handles[fh]
        await self.files.settle(ino)
        return await self.files.read_ahead(ino).read(off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        ino = self.files.handles[fh]
        self._changed(ino)
        await self.files.behind(ino).write(off, buf)
        return len(buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        await self.files.drain(self.files.handles[fh])

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        ino = self.files.handles[fh]
        await self.files.drain(ino)
        await self.fs.fsync(self._path(ino))

    @fuse_errors
    async def release(self, fh: int) -> None:
        ino = self.files.handles.pop(fh)
        try:
            await self.files.drain(ino)
        finally:
            if self.files.last_close(ino):
                await self._remove_hidden(ino)

    async def _remove_hidden(self, ino: int) -> None:
        where = self.inodes.where(ino)
        if where is None:
            return
        await self._change_in(where[0], self.fs.unlink(self._path(ino)))
        self.names.removed(*where)
        self.inodes.detach(*where)

    # -- directories --------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        version = self.names.version(inode)
        names = await self.fs.listdir(self._path(inode))
        if inode != ROOT_INO:  # "/" lists only the volumes granted, lookups see others
            self.names.put(inode, names, version)
        fh = self.files.new_handle()
        self.listings[fh] = DirListing(inode, names)
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries from ``start_id`` of the listing taken at ``opendir``, with their
        attributes (readdirplus), stat-ed a batch at a time, pipelined."""
        listing = self.listings[fh]
        base = self._path(listing.ino)
        prefix = "/" if base == "/" else base + "/"
        index = start_id
        while index < len(listing.names):
            batch = listing.names[index:index + READDIR_BATCH]
            stats = await asyncio.gather(*(self.fs.stat(prefix + name) for name in batch),
                                         return_exceptions=True)
            for name, st in zip(batch, stats, strict=True):
                index += 1
                if isinstance(st, BaseException):
                    continue  # removed since the listing was taken
                ino = self.inodes.lookup(listing.ino, name)
                if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(ino, st),
                                             index):
                    self.inodes.forget(ino, 1)
                    return

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.listings.pop(fh, None)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(self._path(self.listings[fh].ino))

    @fuse_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        """The farm as a whole: every volume's quota and use (FUSE asks without a path)."""
        usage = await self.fs.statfs("/")
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        volumes = max(usage["volumes"], 1)
        data.f_blocks = usage["quota_bytes"] * volumes // 4096
        data.f_bfree = data.f_bavail = max(0, data.f_blocks - usage["bytes_used"] // 4096)
        data.f_files = usage["max_inodes"] * volumes
        data.f_ffree = data.f_favail = max(0, data.f_files - usage["inodes_used"])
        data.f_namemax = 255
        return data
