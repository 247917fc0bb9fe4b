"""A volume: its tree in memory, its journal and snapshot on disk.

Files in a volume directory::

    VOLUME        the volume's name (UTF-8), written once at creation
    snapshot      the whole tree as of generation G (see :mod:`.snapshot`)
    journal.G     every change since that snapshot, in order

A change is made by :meth:`Volume.change`: the record is encoded first (so a change that
cannot be recorded is refused before it is made), then the tree applies it (checking
everything before it changes anything), then the encoded record is buffered in the
journal.  The owner flushes the journal once per loop turn (group commit).  Recovery is
``snapshot`` + replay of ``journal.G``, with the same tree methods and the recorded
timestamps and inode numbers, so the tree comes back exactly, ``stat`` included.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any, Callable

import msgpack

from kernelfarm import durable
from kernelfarm.errors import posix
from kernelfarm.fs import snapshot, store
from kernelfarm.fs.journal import Journal
from kernelfarm.fs.tree import UNLIMITED, Limits, Tree

log = logging.getLogger(__name__)

NAME_FILE = "VOLUME"
SNAPSHOT = "snapshot"
JOURNAL_PREFIX = "journal."

# Record kinds: ``(kind, *args)``, the args of the Tree method that makes the change.
MKDIR, RMDIR, WRITE_FILE, PWRITE, TRUNCATE, UNLINK, RENAME, SYMLINK, CHMOD, UTIME = range(10)
CHANGES: dict[int, Callable[..., Any]] = {
    MKDIR: Tree.mkdir, RMDIR: Tree.rmdir, WRITE_FILE: Tree.write_file, PWRITE: Tree.pwrite,
    TRUNCATE: Tree.truncate, UNLINK: Tree.unlink, RENAME: Tree.rename,
    SYMLINK: Tree.symlink, CHMOD: Tree.chmod, UTIME: Tree.utime,
}

_pack = msgpack.Packer(use_bin_type=True).pack


def replay(tree: Tree, record: Any) -> None:
    CHANGES[record[0]](tree, *record[1:])


class Volume:
    def __init__(self, name: str, directory: str, tree: Tree, journal: Journal,
                 generation: int, snapshot_bytes: int) -> None:
        self.name = name
        self.directory = directory
        self.tree = tree
        self.journal = journal
        self.generation = generation
        self.snapshot_bytes = snapshot_bytes
        self.failed: str | None = None
        """Why this volume refuses every operation (a flush failed, recovery failed)."""

    # -- life cycle --------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, directory: str, perm: int, now: int, limits: Limits) -> Volume:
        """Create the volume's directory atomically and durably (built aside, renamed in)."""
        parent, base = os.path.split(directory)
        durable.makedirs(parent)
        building = os.path.join(parent, store.CREATING + base)
        store.clear(building)
        os.mkdir(building, 0o700)
        durable.create_file(os.path.join(building, NAME_FILE), name.encode("utf-8"))
        durable.create_file(os.path.join(building, JOURNAL_PREFIX + "0"), b"")
        tree = Tree.new(name, perm, now, limits)
        size = snapshot.write(os.path.join(building, SNAPSHOT), tree, 0)  # fsyncs building
        os.rename(building, directory)
        durable.sync_dir(parent)
        journal = Journal(os.path.join(directory, JOURNAL_PREFIX + "0"), 0)
        return cls(name, directory, tree, journal, 0, size)

    @classmethod
    def load(cls, directory: str, limits: Limits) -> Volume:
        """Recover from disk: snapshot, then the journal of its generation."""
        with open(os.path.join(directory, NAME_FILE), "rb") as fh:
            name = fh.read().decode("utf-8")
        snapshot_path = os.path.join(directory, SNAPSHOT)
        tree, generation = snapshot.load(snapshot_path, UNLIMITED)
        if tree.name != name:
            raise ValueError(f"{directory}: snapshot of volume {tree.name!r}, not {name!r}")
        current = JOURNAL_PREFIX + str(generation)
        for entry in os.listdir(directory):
            if entry.startswith(JOURNAL_PREFIX) and entry != current:
                # Left by a crash in the middle of taking a snapshot: the snapshot of
                # generation G already holds everything the older journals did.
                os.unlink(os.path.join(directory, entry))
        journal = Journal.recover(os.path.join(directory, current),
                                  lambda record: replay(tree, record))
        tree.limits = limits
        return cls(name, directory, tree, journal, generation,
                   os.path.getsize(snapshot_path))

    def destroy(self) -> None:
        """Remove the volume from disk, atomically (renamed aside, then deleted)."""
        self.journal.discard()
        parent, base = os.path.split(self.directory)
        removing = os.path.join(parent, store.REMOVING + base)
        store.clear(removing)
        os.rename(self.directory, removing)
        durable.sync_dir(parent)
        store.clear(removing)

    # -- changes -----------------------------------------------------------------------------

    def check(self) -> None:
        if self.failed is not None:
            raise posix(errno.EIO, f"volume {self.name!r} is out of service: {self.failed}")

    def change(self, kind: int, *args: Any) -> Any:
        """Apply one change to the tree and buffer its journal record."""
        payload = _pack((kind, *args))
        result = CHANGES[kind](self.tree, *args)
        self.journal.append(payload)
        return result

    def flush(self, fsync: bool) -> None:
        """Write (and optionally fsync) the buffered records; on failure, go out of service."""
        try:
            self.journal.flush(fsync)
        except OSError as exc:
            self.fail(f"journal write failed: {exc}")
            raise

    def fail(self, reason: str) -> None:
        log.critical("volume %r: %s; refusing every operation until it is reloaded",
                     self.name, reason)
        self.failed = reason
        self.journal.discard()

    def snapshot(self) -> None:
        """Write the whole tree, then restart the journal empty (the journal is flushed)."""
        generation = self.generation + 1
        new_path = os.path.join(self.directory, JOURNAL_PREFIX + str(generation))
        durable.create_file(new_path, b"")
        durable.sync_dir(self.directory)
        try:
            size = snapshot.write(os.path.join(self.directory, SNAPSHOT), self.tree,
                                  generation)
        except BaseException:
            os.unlink(new_path)
            raise
        old = self.journal
        old.discard()
        os.unlink(old.path)
        self.journal = Journal(new_path, 0)
        self.generation = generation
        self.snapshot_bytes = size

    def close(self, fsync: bool = True) -> None:
        """Make everything durable and release the file descriptor."""
        if self.failed is None:
            self.flush(fsync)
        self.journal.close_fd()
