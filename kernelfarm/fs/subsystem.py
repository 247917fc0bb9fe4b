"""The fs subsystem: the ``fs.*`` RPC methods of a kernel, over the volumes of its slots.

Every method is stateless and path-based (like NFS) and takes the path it acts on as its
first parameter, so the partition key is always the volume of the first parameter.  ``/``
itself is virtual and belongs to no kernel: listing it lists this kernel's volumes (the
client merges all kernels), and only directories, which are volumes, can be made in it.
Volumes behave as separate mounts: a rename between volumes, or of a volume root, fails
with ``EXDEV``.

Durability (group commit): a change buffers its journal record and asks the kernel for a
flush; the kernel calls :meth:`FsSubsystem._flush` once at the end of the loop turn and
holds the turn's replies until it has written and the journals it names are synced (by
the kernel, or behind its loop by a syncer: :mod:`kernelfarm.kernel.commit`).  With
``fsync = "always"`` the flush writes each volume changed in that turn once and names
them all for the sync; with ``"batch"`` it writes, and a timer fsyncs every
``batch_interval_ms``; with ``"never"`` it only writes.  A flush that fails
raises (the kernel then exits without acknowledging anything, and restarts from the
journal) and takes the volume out of service: every later operation on it gets ``EIO``
until it is loaded again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat as statmod
from collections import OrderedDict
from time import time_ns
from typing import Any

import msgspec

from kernelfarm.errors import Refusal, posix
from kernelfarm.fs import store
from kernelfarm.fs.config import FsConfig
from kernelfarm.fs.loading import loading_volume
from kernelfarm.fs.params import bool_param, bytes_param, int_param, mode_param, str_param
from kernelfarm.fs.paths import KEPT_PATH_CHARS, parse, routing_key
from kernelfarm.fs.snapshot_schedule import SnapshotSchedule
from kernelfarm.fs.space import RECORD_OVERHEAD, VOLUME_BYTES, FreeSpace, removals_keep
from kernelfarm.fs.tree import FILE_PERM, Dir, File, Limits, stat_of
from kernelfarm.fs.volume import (
    BY_REFERENCE, CHMOD, MKDIR, PWRITE, RENAME, RMDIR, SYMLINK, TRUNCATE, UNLINK, UTIME,
    WRITE_FILE, Volume,
)
from kernelfarm.kernel.subsystem import KernelContext, Method, Subsystem, Unheld
from kernelfarm.partition import key_slot
from kernelfarm.steps import Steps

log = logging.getLogger(__name__)

_encode = msgspec.msgpack.Encoder().encode

ROOT_STAT = msgspec.Raw(_encode({
    "type": "dir", "size": 0, "mode": statmod.S_IFDIR | 0o755, "nlink": 2, "ino": 0,
    "mtime_ns": 0, "ctime_ns": 0}))
"""``stat("/")``: the same on every kernel, since ``/`` belongs to none of them."""
STATS_KEPT = 4096
"""Encoded stat results a volume keeps; past this its memory starts afresh (bounded)."""
RESOLVED_KEPT = 8192
"""Resolved paths a kernel keeps (:attr:`FsSubsystem._resolved`); past this its memory
starts afresh (bounded)."""
REMOVALS = frozenset({UNLINK, RMDIR})
"""Changes that may use half the free-space reserve (:func:`.space.removals_keep`)."""

Resolved = tuple[Volume | None, tuple[str, ...]]
"""A path's volume and its components below the volume root; ``(None, ())`` for ``/``."""

INT64 = 2**63
REPLY_OVERHEAD = 64
"""Bytes of a ``read_file``/``pread`` reply beyond the data (``[1, msgid, nil, bin32]``)."""


class FsSubsystem(Subsystem):
    name = "fs"

    def __init__(self, ctx: KernelContext) -> None:
        super().__init__(ctx)
        config: FsConfig = ctx.config.fs
        self.config = config
        self.limits = Limits(config.max_file_bytes, config.volume_quota_bytes,
                             config.volume_max_inodes)
        self.volumes: dict[str, Volume] = {}
        self.by_slot: dict[int, dict[str, Volume]] = {}
        self._stats: dict[str, msgspec.Raw] = {}
        """Kept ``fs.stat`` results of every volume served, by path: what each volume
        keeps (``Volume.stats``), in one table, so a kept stat is one lookup.  A volume
        drops its own from here whenever it changes, fails or leaves
        (``Volume.forget_stats``)."""
        self._resolved: dict[str, tuple[Volume, tuple[str, ...]]] = {}
        """Paths of volumes in service, resolved (parsed, their volume found): every fs
        call on a path served before starts with one dict lookup.  A kept volume is still
        checked for being in service; volumes leave only by :meth:`_drop`, which forgets
        every kept path, so a path never resolves to a volume that is gone."""
        self._sync_every_turn = config.fsync == "always"
        self._reply_waits = False
        """A reply of this turn waits for its syncs (``fs.fsync``; every turn's under
        ``always``): else they are the batch timer's, which no reply waits for."""
        self._batch = config.fsync == "batch"
        self._room = config.fsync != "never"
        """Whether journals keep zeroed room: only where an fdatasync will follow."""
        self._snapshot_journal_bytes = config.snapshot_journal_bytes
        self._open_journals = config.open_journals
        self._dirty: dict[Volume, bool] = {}          # changed this turn -> must fsync
        self._unsynced: set[Volume] = set()           # written, fsync due (batch mode)
        self._open: OrderedDict[Volume, None] = OrderedDict()  # journals holding an fd
        self._flush_requested = False
        self._now = 0
        """The time of this turn's changes, 0 until its first change (:meth:`_time`)."""
        self._pending_error: OSError | None = None
        self._batch_timer: asyncio.TimerHandle | None = None
        self.unnamed: dict[str, str] = {}
        """Volume directories that could not be loaded, not even their name: why."""
        self._space = FreeSpace(str(ctx.data_dir), config.reserve_bytes)
        self._snapshots = SnapshotSchedule(ctx.loop, self._space, config.fsync != "never")
        self._max_reply = ctx.config.rpc.max_message_bytes - REPLY_OVERHEAD

    def methods(self) -> list[Method]:
        def m(name: str, handler: Any, writes: bool = False) -> Method:
            return Method(f"fs.{name}", handler, routing_key, writes=writes)

        return [
            m("mkdir", self.mkdir, True), m("rmdir", self.rmdir, True),
            m("listdir", self.listdir),
            Method("fs.stat", self.stat, routing_key, kept=self._stats),
            m("write_file", self.write_file, True), m("create", self.create, True),
            m("read_file", self.read_file),
            m("pread", self.pread), m("pwrite", self.pwrite, True),
            m("truncate", self.truncate, True), m("unlink", self.unlink, True),
            m("rename", self.rename, True), m("fsync", self.fsync),
            m("symlink", self.symlink, True), m("readlink", self.readlink),
            m("chmod", self.chmod, True), m("utime", self.utime, True),
            m("statfs", self.statfs),
        ]

    # -- resolving ---------------------------------------------------------------------------

    def _volume(self, name: str, path: str) -> Volume:
        volume = self.volumes.get(name)
        if volume is None:
            raise posix(errno.ENOENT, path)
        volume.check()
        return volume

    def _resolve(self, path: Any, creating: bool = False) -> Resolved:
        """``(volume, components)``; ``(None, ())`` for ``/`` itself.  ``creating``: a
        missing ``/name`` is ``EPERM`` (only mkdir makes a volume), not ``ENOENT``."""
        try:
            resolved = self._resolved[path]  # a subscript: see stat
        except (KeyError, TypeError):  # not kept, or unhashable: parse() refuses it
            return self._resolving(path, creating)
        if resolved[0].failed is None:
            return resolved
        return self._resolving(path, creating)

    def _resolving(self, path: Any, creating: bool) -> Resolved:
        """Resolve a path not resolved yet (or of a volume out of service, which raises),
        and keep it: the next call for it is one dict lookup (:attr:`_resolved`)."""
        name, comps = parse(path)
        if name is None:
            return None, comps
        volume = self.volumes.get(name)
        if volume is None or volume.failed is not None:
            if creating and not comps and volume is None:
                raise posix(errno.EPERM, f"only volumes (directories) can be made in /: {path}")
            volume = self._volume(name, path)  # raises the proper error
        if len(path) <= KEPT_PATH_CHARS:
            resolved = self._resolved
            if len(resolved) >= RESOLVED_KEPT:
                resolved.clear()
            resolved[path] = volume, comps
        return volume, comps

    # -- reads -------------------------------------------------------------------------------
    # A handler's parameters are what the client sent, unchecked until the handler checks
    # them, hence ``Any``: compiled (kernelfarm.accel), a ``str`` annotation would refuse
    # an int path with a TypeError (EIO) before the handler could say EINVAL.

    def listdir(self, path: Any) -> list[str]:
        volume, comps = self._resolve(path)
        if volume is None:
            return sorted(self.volumes)
        return volume.tree.listdir(comps)

    def stat(self, path: Any) -> msgspec.Raw | Refusal:
        """The stat map, encoded once and kept until its volume changes (a stat reply is
        then one dict lookup and a copy); a missing path is a refusal, not an exception."""
        # A kept result is served without resolving the path: it is in _stats only while
        # its volume is in service and unchanged (Volume.forget_stats).  Asked with
        # .get(): every change of a volume drops its results, so misses are expected.
        try:
            stat = self._stats.get(path)
        except TypeError:  # unhashable: parse() refuses it below
            stat = None
        if stat is not None:
            return stat
        # _resolve inlined: a frame costs as much as the rest of a stat.  A kept path is
        # found by subscript, not .get() (a method call: about 100 instructions more per
        # lookup); a path not kept yet pays an exception once.
        try:
            volume, comps = self._resolved[path]
        except (KeyError, TypeError):  # not kept, or unhashable: parse() refuses it
            volume = None
        if volume is None or volume.failed is not None:
            found, comps = self._resolving(path, False)
            if found is None:
                return ROOT_STAT
            volume = found
        node = volume.tree.find(comps)
        if node is None:
            return Refusal(errno.ENOENT, path)
        stat = msgspec.Raw(_encode(stat_of(node)))
        if len(path) <= KEPT_PATH_CHARS:
            if len(volume.stats) >= STATS_KEPT:
                volume.forget_stats()
            volume.stats[path] = stat
            self._stats[path] = stat
        return stat

    def read_file(self, path: Any) -> bytes:
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EISDIR, "/")
        return volume.tree.read_file(comps, self._max_reply)

    def pread(self, path: Any, offset: Any, size: Any) -> bytes:
        int_param(offset, "offset")
        int_param(size, "size")
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EISDIR, "/")
        return volume.tree.pread(comps, offset, size, self._max_reply)

    def readlink(self, path: Any) -> str:
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EINVAL, "not a symlink: /")
        return volume.tree.readlink(comps)

    def statfs(self, path: Any) -> dict[str, Any]:
        """The quota and use of the path's volume; on ``/``, the sums over this kernel's
        volumes (``volumes`` says how many), so a client can add up the whole farm."""
        volume, _ = self._resolve(path)
        trees = [v.tree for v in self.volumes.values()] if volume is None else [volume.tree]
        return {"volumes": len(trees), "quota_bytes": self.limits.quota_bytes,
                "max_inodes": self.limits.max_inodes,
                "bytes_used": sum(tree.bytes_used for tree in trees),
                "inodes_used": sum(tree.inodes for tree in trees)}

    def fsync(self, path: Any) -> None:
        """Make every change of the path's volume durable before replying (any policy)."""
        volume, comps = self._resolve(path)
        if volume is None:
            return
        volume.tree.lookup(comps)
        self._changed(volume, sync=True)
        self._reply_waits = True

    # -- changes -----------------------------------------------------------------------------

    def mkdir(self, path: Any, mode: Any = 0o755) -> None:
        perm = mode_param(mode) & 0o1777  # as Linux: mkdir drops setuid/setgid
        name, comps = parse(path)
        if name is None:
            raise posix(errno.EEXIST, "/")
        if not comps:
            self._create_volume(name, perm)
            return
        volume = self._volume(name, path)
        self._change(volume, 0, MKDIR, (comps, perm, volume.tree.next_ino, self._time()))

    def rmdir(self, path: Any) -> None:
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EBUSY, "/")
        if not comps:
            self._remove_volume(volume)
            return
        self._change(volume, 0, RMDIR, (comps, self._time()))

    def write_file(self, path: Any, data: Any) -> None:
        """Replace a file's whole content.  The hottest change (issue 14's 16-byte write,
        fsync always), so its common case -- a kept path, data under ``BY_REFERENCE``
        bytes, a free-space estimate far from the reserve -- is :meth:`_change` inlined:
        no frame to resolve the path, check the space or read the turn's time once it is
        read, no generic record tuple (:meth:`Volume.write_file`); about 400 ns of a
        1.4 us handler.  Anything else takes :meth:`_change`, which checks the space the
        long way."""
        if type(data) is not bytes:
            data = bytes_param(data)
        try:
            volume, comps = self._resolved[path]
        except (KeyError, TypeError):
            volume = None
        if volume is None or volume.failed is not None:
            found, comps = self._resolving(path, True)
            if found is None:
                raise posix(errno.EISDIR, "/")
            volume = found
        size = len(data)
        now = self._now or self._time()
        space = self._space
        left = space.free - RECORD_OVERHEAD - size
        if size < BY_REFERENCE and left >= space.low:
            space.free = left
            volume.write_file(comps, data, now)
            if volume not in self._dirty:
                self._changed(volume)
            return
        self._change(volume, size, WRITE_FILE, (comps, data, volume.tree.next_ino, now))

    def create(self, path: Any, mode: Any = FILE_PERM, exclusive: Any = False,
               truncate: Any = False) -> dict[str, Any]:
        """``open(path, O_CREAT[|O_EXCL][|O_TRUNC], mode)``: make an empty file with
        ``mode``, or leave the file already there as it is (``EEXIST`` if ``exclusive``;
        emptied if ``truncate``); its stat.

        The check and the creation happen in one request, and a kernel serves one request
        at a time, so ``exclusive`` holds against every other client (``write_file``
        would replace the other client's file), and a client may send its writes right
        behind a create it has not seen answered: ``truncate`` empties the file in the
        same request, never after them."""
        perm = mode_param(mode) & 0o7777
        bool_param(exclusive, "exclusive")
        bool_param(truncate, "truncate")
        volume, comps = self._resolve(path, True)
        if volume is None:
            raise posix(errno.EISDIR, "/")
        # The new name is the common case (cp -a, an O_EXCL create): found missing
        # without an exception (a missing directory on the way raises ENOENT, as
        # open(2) says), and its stat taken from the file made, not looked up again.
        node = volume.tree.find(comps)
        if node is None:
            now = self._time()
            self._space.take(2 * RECORD_OVERHEAD)  # both records, or neither
            made = volume.change(WRITE_FILE, (comps, b"", volume.tree.next_ino, now))
            if perm != FILE_PERM:
                volume.change(CHMOD, (comps, perm, now))
            self._changed(volume)
            return stat_of(made)
        if exclusive:
            raise posix(errno.EEXIST, path)
        elif isinstance(node, Dir):
            raise posix(errno.EISDIR, path)
        elif not isinstance(node, File):
            raise posix(errno.ELOOP, path)  # a symlink: never followed
        if truncate and node.data:
            self._change(volume, 0, TRUNCATE, (comps, 0, self._time()))
        return stat_of(node)

    def pwrite(self, path: Any, offset: Any, data: Any) -> int:
        int_param(offset, "offset")
        data = bytes_param(data)
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EISDIR, "/")
        count: int = self._change(volume, len(data), PWRITE, (comps, offset, data, self._time()))
        return count

    def truncate(self, path: Any, size: Any) -> None:
        if int_param(size, "size") < 0:
            raise posix(errno.EINVAL, "negative size")  # before the lookup, as Linux
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EISDIR, "/")
        self._change(volume, 0, TRUNCATE, (comps, size, self._time()))

    def unlink(self, path: Any) -> None:
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EISDIR, "/")
        self._change(volume, 0, UNLINK, (comps, self._time()))

    def rename(self, src: Any, dst: Any) -> None:
        """Within one volume only: another volume, ``/`` or a volume root is ``EXDEV``."""
        src_name, src_comps = parse(src)
        dst_name, dst_comps = parse(dst)
        if src_name != dst_name or not src_comps or not dst_comps:
            raise posix(errno.EXDEV, f"{src} -> {dst}: rename within one volume only")
        assert src_name is not None  # "/" has no components: refused just above
        volume = self._volume(src_name, src)
        self._change(volume, 0, RENAME, (src_comps, dst_comps, self._time()))

    def symlink(self, path: Any, target: Any) -> None:
        """Create the symlink ``path`` holding ``target`` (stored, never followed)."""
        str_param(target, "target")
        if not target or "\0" in target:
            raise posix(errno.ENOENT if not target else errno.EINVAL, "symlink target")
        if len(target.encode("utf-8")) >= 4096:
            raise posix(errno.ENAMETOOLONG, "symlink target")
        volume, comps = self._resolve(path, True)
        if volume is None:
            raise posix(errno.EEXIST, "/")
        self._change(volume, 0, SYMLINK, (target, comps, volume.tree.next_ino, self._time()))

    def chmod(self, path: Any, mode: Any) -> None:
        perm = mode_param(mode) & 0o7777
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EPERM, "/ is virtual")
        self._change(volume, 0, CHMOD, (comps, perm, self._time()))

    def utime(self, path: Any, mtime_ns: Any) -> None:
        """Set the modification time (ctime moves to now, as Linux's utimensat)."""
        if not -INT64 <= int_param(mtime_ns, "mtime_ns") < INT64:
            raise posix(errno.EINVAL, "mtime_ns out of range")
        volume, comps = self._resolve(path)
        if volume is None:
            raise posix(errno.EPERM, "/ is virtual")
        self._change(volume, 0, UTIME, (comps, mtime_ns, self._time()))

    def _change(self, volume: Volume, size: int, kind: int, args: tuple[Any, ...]) -> Any:
        """Every change goes through here: refused with ENOSPC while the disk is nearly
        full (so a journal write never has to fail for want of space; ``size`` is the
        bytes of data it carries; a removal may use half the reserve, so a full data dir
        can be emptied: :func:`.space.removals_keep`), made, and its volume marked for
        the group commit.
        ``args`` carry the turn's time (:meth:`_time`), which checked the free-space
        reading's age."""
        space = self._space
        need = RECORD_OVERHEAD + size
        left = space.free - need
        if left >= space.low:
            space.free = left  # FreeSpace.try_take's common case, without its call
        elif not space.try_take(need, removals_keep(space.reserve) if kind in REMOVALS
                                else -1):
            raise space.full()
        if size < BY_REFERENCE:
            result = volume.change(kind, args)
        else:
            result = volume.change_data(kind, args)
        if volume not in self._dirty:
            self._changed(volume)
        return result

    # -- volumes -----------------------------------------------------------------------------

    def _create_volume(self, name: str, perm: int) -> None:
        if name in self.volumes:
            raise posix(errno.EEXIST, f"/{name}")
        slot = key_slot(name)
        directory = os.path.join(store.slot_dir(self.ctx.data_dir, slot),
                                 store.volume_dirname(name))
        if os.path.lexists(directory):
            log.error("volume %r is not loaded but its directory %s exists", name, directory)
            raise posix(errno.EEXIST, f"/{name}")
        self._space.take(VOLUME_BYTES)
        volume = Volume.create(name, directory, perm, self._time(), self.limits)
        self._add(slot, volume)

    def _remove_volume(self, volume: Volume) -> None:
        volume.check_writable()
        if volume.tree.root.entries:
            raise posix(errno.ENOTEMPTY, f"/{volume.name}")
        self._drop(volume)
        volume.destroy()

    def _add(self, slot: int, volume: Volume) -> None:
        volume.stats_everywhere = self._stats
        self.volumes[volume.name] = volume
        self.by_slot.setdefault(slot, {})[volume.name] = volume

    def _drop(self, volume: Volume) -> None:
        del self.volumes[volume.name]
        self._resolved.clear()  # a kept path of this volume must not find it
        volume.forget_stats()  # nor a kept stat be answered from it
        slot = key_slot(volume.name)
        in_slot = self.by_slot.get(slot, {})
        in_slot.pop(volume.name, None)
        if not in_slot:
            self.by_slot.pop(slot, None)
        self._dirty.pop(volume, None)
        self._unsynced.discard(volume)
        self._open.pop(volume, None)
        self._snapshots.cancel(volume)

    # -- group commit ------------------------------------------------------------------------

    def _changed(self, volume: Volume, sync: bool = False) -> None:
        if sync or volume not in self._dirty:
            self._dirty[volume] = sync
        self._request_flush()

    def _request_flush(self) -> None:
        if not self._flush_requested:
            self._flush_requested = True
            self.ctx.request_flush(self._flush)

    def _time(self) -> int:
        """The time of this turn's changes (``time_ns``): read at the turn's first change
        and kept until its flush, which the first read asks for (so it never outlives
        the turn, even if that change is refused).  Every change of a turn gets the same
        time, as Linux stamps files from a coarse clock (a tick, not a read of the clock
        per write), and the clocks are read once per turn instead of twice per change
        (about 110 ns of a 16-byte write_file): this one, and the free-space reading's
        age (:meth:`FreeSpace.check_age`)."""
        now = self._now
        if not now:
            now = self._now = time_ns()
            self._space.check_age()
            self._request_flush()
        return now

    def _flush(self) -> list[int]:
        """The turn's group commit: write each changed volume's journal once; the
        descriptors of the journals to sync before the turn's replies go out."""
        dirty, self._dirty = self._dirty, {}
        self._flush_requested = False
        self._now = 0
        error, self._pending_error = self._pending_error, None
        reply_waits, self._reply_waits = self._reply_waits, False
        # A turn of one change (a client's round trip) pays all of this, so the policy's
        # answers are read once at boot and the common path -- one volume written, kept
        # open, far from its snapshot -- calls nothing but its write.
        room = self._room
        syncing: list[Volume] = []
        opened = self._open
        for volume, must_sync in dirty.items():
            if volume.failed is not None:
                error = error or posix(errno.EIO, f"volume {volume.name!r}: {volume.failed}")
                continue
            try:
                # The zeroed room takes disk space before any record does: counted now,
                # or a journal switched with room unused would leave the estimate high.
                added = volume.write(room)
            except OSError as exc:
                error = error or exc
                continue
            if added:
                self._space.free -= added
            journal = volume.journal
            if self._sync_every_turn or must_sync:
                syncing.append(volume)
                self._unsynced.discard(volume)
            elif self._batch and journal.unsynced:
                self._unsynced.add(volume)
            opened[volume] = None  # the most recently written (bounded: _keep_open)
            opened.move_to_end(volume)
            if len(opened) > self._open_journals:
                self._keep_open()
            size = journal.size
            if size > self._snapshot_journal_bytes and size > volume.snapshot_bytes:
                self._snapshot(volume)
        if self._batch and self._unsynced and self._batch_timer is None:
            self._batch_timer = self.ctx.loop.call_later(
                self.config.batch_interval_ms / 1000, self._batch_sync)
        if error is not None:
            raise error
        if not syncing:
            return []
        # Last: a journal switched (snapshot) or closed (_keep_open) above was synced by
        # the kernel then, and is not unsynced any more.
        fds = [volume.journal.sync_elsewhere() for volume in syncing
               if volume.failed is None and volume.journal.unsynced]
        return fds if self._sync_every_turn or reply_waits else Unheld(fds)

    def _batch_sync(self) -> None:
        """The batch policy's timer: the journals written since their last sync are
        synced by a group commit of their own -- behind the loop where the kernel has a
        syncer, so the loop never waits for an ``fdatasync``, and :class:`Unheld`: every
        write it covers was answered already, so no reply made meanwhile waits for it
        (an ``fs.fsync`` of the same turn still does).  A failed sync is fatal, as every
        group commit's is."""
        self._batch_timer = None
        unsynced, self._unsynced = self._unsynced, set()
        for volume in unsynced:
            if volume.failed is None:
                self._changed(volume, sync=True)

    def _snapshot(self, volume: Volume) -> None:
        """Restart the volume's journal from a snapshot (:mod:`.snapshot_schedule`); once
        switched, the journal :attr:`_open` counted is no longer the volume's."""
        if self._snapshots.start(volume):
            self._open.pop(volume, None)

    def _keep_open(self) -> None:
        """Bound open journal descriptors: close the least recently written beyond the
        cap (``_flush`` keeps :attr:`_open` in the order they were written)."""
        while len(self._open) > self._open_journals:
            oldest, _ = self._open.popitem(last=False)
            journal = oldest.journal
            # Handed to a sync in flight (which holds its own reference): nothing to add.
            if journal.unsynced and not journal.sync_asked and self._room:
                self._unsynced.discard(oldest)
                try:
                    oldest.flush(True)
                except OSError:
                    continue  # the volume took itself out of service and logged why
            journal.close_fd()

    # -- slots -------------------------------------------------------------------------------

    def loading(self, slots: list[int]) -> Steps[None]:
        """Load the volumes of ``slots``, a step at a time: only those with a directory
        are looked at (one listing of ``data_dir/fs``, not one lookup per slot: a kernel
        boots with thousands of slots, most of them empty)."""
        present = store.slot_numbers(self.ctx.data_dir)
        for slot in slots:
            if slot in present:
                yield from self._loading_slot(slot)

    def _loading_slot(self, slot: int) -> Steps[None]:
        """Load the volumes of ``slot``.  A damaged volume comes up out of service (EIO)
        and the rest are served; but a slot directory that cannot be listed raises: its
        volumes are unknown, and serving the slot as empty would hide them and refuse
        their names with a puzzling EEXIST.  The kernel then fails to boot (or to acquire
        the slot), which the supervisor reports."""
        if slot in self.by_slot:
            return
        for directory in store.volume_dirs(store.slot_dir(self.ctx.data_dir, slot)):
            volume = yield from loading_volume(directory, self.limits, self.unnamed)
            if volume is None:
                continue
            if volume.name in self.volumes:
                log.error("%s: volume %r is already loaded; ignoring this copy", directory,
                          volume.name)
                continue
            self._add(slot, volume)

    def release_slot(self, slot: int) -> None:
        prefix = store.slot_dir(self.ctx.data_dir, slot) + os.sep
        for directory in [d for d in self.unnamed if d.startswith(prefix)]:
            del self.unnamed[directory]
        for volume in list(self.by_slot.get(slot, {}).values()):
            self._drop(volume)
            try:
                volume.close(fsync=True)
            except OSError as exc:
                # Replies of this turn may be held for these records: fail the turn's
                # flush too, so nothing undurable is acknowledged.
                self._pending_error = self._pending_error or exc
                self._request_flush()

    def close(self) -> None:
        self._snapshots.close()
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        error: OSError | None = None
        for volume in list(self.volumes.values()):
            try:
                volume.close(fsync=self.config.fsync != "never")
            except OSError as exc:
                error = error or exc
        self.volumes.clear()
        self._resolved.clear()
        self._stats.clear()
        self.by_slot.clear()
        self._dirty.clear()
        self._unsynced.clear()
        self._open.clear()
        if error is not None:
            raise error

    def stats(self) -> dict[str, Any]:
        volumes = self.volumes.values()
        return {
            "volumes": len(self.volumes),
            "files": sum(v.tree.files for v in volumes),
            "inodes": sum(v.tree.inodes for v in volumes),
            "bytes": sum(v.tree.bytes_used for v in volumes),
            "journal_bytes": sum(v.journal.size + v.journal.pending for v in volumes),
            "failed": sum(1 for v in volumes if v.failed is not None),
            "read_only": sum(1 for v in volumes if v.read_only is not None),
            "snapshots": self._snapshots.count,
            "snapshot_seconds": self._snapshots.seconds,
            "snapshot_failures": self._snapshots.failures,
            "snapshots_running": len(self._snapshots.writer.jobs),
            "journals_removing": len(self._snapshots.writer.removals),
            "damaged": {**{v.name: v.failed or v.read_only for v in volumes
                           if v.failed is not None or v.read_only is not None},
                        **self.unnamed},
        }
