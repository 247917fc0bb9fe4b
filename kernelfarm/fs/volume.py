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

import msgspec

from kernelfarm import durable
from kernelfarm.errors import posix
from kernelfarm.fs import snapshot, store
from kernelfarm.fs.journal import Journal, journal_records, removing, replaying_whole
from kernelfarm.fs.tree import UNLIMITED, Limits, Tree
from kernelfarm.steps import Steps, finish

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

_encode = msgspec.msgpack.Encoder().encode
"""Journal records: msgpack, as :func:`.journal.read_records` reads them (msgspec encodes
a record in about half the time msgpack's Packer takes)."""

DATA_ARG = {WRITE_FILE: 1, PWRITE: 2}
"""Where the file data is among the args of the records that carry it."""
BY_REFERENCE = 64 * 1024
"""Data at least this big is journaled by reference (:func:`spliced`), not copied into
the encoded record and again into the journal's buffer."""


def spliced(kind: int, args: tuple[Any, ...], at: int) -> tuple[bytes, bytes]:
    """The msgpack of record ``(kind, *args)`` before and after its data ``args[at]``
    (the data itself goes to the journal as it is).

    The same object as :func:`_encode` gives, except that the data is a ``bin 32`` even
    when a shorter header would do (every msgpack reader takes it; data journaled by
    reference is over 64 KiB, which needs ``bin 32`` anyway).
    """
    head = _encode((kind, *args[:at]))
    tail = _encode(args[at + 1:])
    count = len(args) + 1  # fewer than 16: a fixarray, one byte of header
    data_header = b"\xc6" + len(args[at]).to_bytes(4, "big")
    return bytes([0x90 | count]) + head[1:] + data_header, tail[1:]


def replay(tree: Tree, frame: Any) -> None:
    """Apply one frame of a journal: a record, which starts with its kind (an int), or a
    turn's group of records (:mod:`.journal`), in order."""
    if type(frame[0]) is int:
        CHANGES[frame[0]](tree, *frame[1:])
        return
    for record in frame:
        CHANGES[record[0]](tree, *record[1:])


def journal_path(directory: str, generation: int) -> str:
    return os.path.join(directory, JOURNAL_PREFIX + str(generation))


def journal_generations(directory: str) -> list[int]:
    """The generations of the journal files in ``directory``, oldest first."""
    found = []
    for entry in os.listdir(directory):
        if entry.startswith(JOURNAL_PREFIX) and entry[len(JOURNAL_PREFIX):].isdigit():
            found.append(int(entry[len(JOURNAL_PREFIX):]))
    return sorted(found)


def read_name(directory: str) -> str | None:
    """The name in the volume's name file, if it is readable and names this directory."""
    try:
        with open(os.path.join(directory, NAME_FILE), "rb") as fh:
            name = fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return name if store.volume_dirname(name) == os.path.basename(directory) else None


def checked_name(directory: str, snapshot_name: str) -> str:
    """The volume's name: the name file's, or else the snapshot's (then the name file is
    rewritten), but only a name whose hash is the directory's name."""
    name = read_name(directory)
    if name is not None:
        if snapshot_name != name:
            raise ValueError(f"{directory}: snapshot of volume {snapshot_name!r}, "
                             f"not {name!r}")
        return name
    if store.volume_dirname(snapshot_name) != os.path.basename(directory):
        raise ValueError(f"{directory}: neither the name file nor the snapshot (of "
                         f"{snapshot_name!r}) names this directory")
    log.warning("%s: the name file is damaged; the snapshot names the volume %r: repaired",
                directory, snapshot_name)
    durable.write_file(os.path.join(directory, NAME_FILE), snapshot_name.encode("utf-8"))
    return snapshot_name


def find_name(directory: str) -> str | None:
    """The name of a volume that cannot be loaded: from its name file or its snapshot."""
    name = read_name(directory)
    if name is None:
        name = snapshot.peek_name(os.path.join(directory, SNAPSHOT))
        if name is not None and store.volume_dirname(name) != os.path.basename(directory):
            name = None
    return name


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
        self.read_only: str | None = None
        """Why this volume refuses changes (it was salvaged from a damaged copy)."""
        self.stats: dict[str, msgspec.Raw] = {}
        """``fs.stat`` results of this volume's paths, encoded, by path: valid until the
        next change of the volume, which forgets them all (:meth:`forget_stats`)."""
        self.stats_everywhere: dict[str, msgspec.Raw] = {}
        """The kernel-wide table of kept stat results that ``fs.stat`` looks in first
        (``FsSubsystem._stats``, given when the volume is served): this volume's results
        are in it exactly while they are in :attr:`stats`."""

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
        journal = Journal.create(journal_path(building, 0), durable=True)
        tree = Tree.new(name, perm, now, limits)
        size = snapshot.write(os.path.join(building, SNAPSHOT), tree, 0)  # fsyncs building
        os.rename(building, directory)
        durable.sync_dir(parent)
        journal.path = journal_path(directory, 0)  # renamed in with its directory
        return cls(name, directory, tree, journal, 0, size)

    @classmethod
    def loading(cls, directory: str, limits: Limits) -> Steps[Volume]:
        """Recover from disk: the snapshot, then every journal of its generation or later.

        A snapshot of generation G holds everything journals older than G did, so those
        are deleted (left by a crash while a snapshot was installed).  Journals G, G+1, ...
        are replayed in order (a snapshot still being written lets writes go on in the
        next generation); every one but the last must be whole, and the last is cut at a
        torn tail and appended to -- unless it is in format 1 (written by an older
        kernelfarm): then it is made durable as it is, and writes go on in a new
        generation in format 2 (the next snapshot folds both in).

        A step at a time (see :mod:`kernelfarm.steps`): a kernel loading a big volume
        still answers its supervisor and its other slots.
        """
        snapshot_path = os.path.join(directory, SNAPSHOT)
        for entry in os.listdir(directory):
            if entry.startswith(SNAPSHOT + ".tmp"):  # a snapshot never installed
                os.unlink(os.path.join(directory, entry))
        tree, generation = yield from snapshot.loading(snapshot_path, UNLIMITED)
        name = checked_name(directory, tree.name)
        later = []
        for gen in journal_generations(directory):
            if gen < generation:
                os.unlink(journal_path(directory, gen))
            else:
                later.append(gen)
        if not later or later[0] != generation:
            raise ValueError(f"{directory}: no journal.{generation} for its snapshot")

        def apply(record: Any) -> None:
            replay(tree, record)

        for gen in later[:-1]:
            yield from replaying_whole(journal_path(directory, gen), apply)
        last = journal_path(directory, later[-1])
        journal = yield from Journal.recovering(last, apply)
        tree.limits = limits
        volume = cls(name, directory, tree, journal or Journal(last, 0), later[-1],
                     os.path.getsize(snapshot_path))
        if journal is None:
            log.info("%s: journal.%d is in format 1; writes go on in journal.%d",
                     directory, later[-1], later[-1] + 1)
            durable.sync_file(last)  # whole before a change in the next one is durable
            volume.next_journal(durable_switch=True)
        return volume

    @classmethod
    def salvage(cls, directory: str, name: str, why: str) -> Volume:
        """What can still be read of a volume that failed to load, served read-only.

        The snapshot up to its first damaged record; if the snapshot is whole, then the
        journals' records in order up to the first that cannot be read or applied.
        Nothing on disk is changed, so a later fix (or a better version of this code)
        still finds everything that was there.
        """
        tree, generation, damage = snapshot.load_partial(os.path.join(directory, SNAPSHOT))
        problems = [why]
        if damage is not None:
            problems.append(f"snapshot: {damage}")
        else:
            for gen in journal_generations(directory):
                if gen < generation:
                    continue
                try:
                    for record in journal_records(journal_path(directory, gen)):
                        replay(tree, record)
                except Exception as exc:  # a record that cannot apply ends the replay
                    problems.append(f"journal.{gen}: {exc}")
                    break
        volume = cls(name, directory, tree, Journal(os.devnull, 0), generation, 0)
        volume.read_only = "; ".join(problems)
        return volume

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

    def forget_stats(self) -> None:
        """Drop the kept stat results of this volume, here and in the kernel-wide table
        (any change may change any stat of the volume; a failed or departed volume
        answers none)."""
        everywhere = self.stats_everywhere
        for path in self.stats:
            everywhere.pop(path, None)
        self.stats.clear()

    def check(self) -> None:
        if self.failed is not None:
            raise posix(errno.EIO, f"volume {self.name!r} is out of service: {self.failed}")

    def check_writable(self) -> None:
        if self.read_only is not None:
            raise posix(errno.EROFS, f"volume {self.name!r} is read-only: {self.read_only}")

    def change(self, kind: int, args: tuple[Any, ...]) -> Any:
        """Apply one change to the tree and buffer its journal record ``(kind, *args)``.

        The arguments come as one tuple, made once by the caller: a ``*args`` signature
        packed them again, and a call with ``*`` costs more than a plain one (together
        about 150 ns of a 16-byte write_file)."""
        if self.read_only is not None:
            self.check_writable()
        if self.stats:  # any change may change any stat of the volume
            self.forget_stats()
        payload = _encode((kind, *args))
        result = CHANGES[kind](self.tree, *args)
        self.journal.records.append(payload)  # no frame of its own: the write frames it
        return result

    def write_file(self, comps: tuple[str, ...], data: bytes, now: int) -> None:
        """:meth:`change` for a ``WRITE_FILE`` record of data under ``BY_REFERENCE``
        bytes: the hottest change, without the generic one's record tuple, table lookup
        and ``*`` call (about 100 ns of a 16-byte write)."""
        if self.read_only is not None:
            self.check_writable()
        if self.stats:  # forgotten by a change, refilled only by fs.stat: mostly empty here
            self.forget_stats()
        tree = self.tree
        ino = tree.next_ino
        payload = _encode((WRITE_FILE, comps, data, ino, now))
        tree.write_file(comps, data, ino, now)
        self.journal.records.append(payload)

    def change_data(self, kind: int, args: tuple[Any, ...]) -> Any:
        """:meth:`change` for a record that carries file data of ``BY_REFERENCE`` bytes
        or more: the data is journaled by reference (:func:`spliced`)."""
        if self.read_only is not None:
            self.check_writable()
        if self.stats:
            self.forget_stats()
        at = DATA_ARG[kind]
        head, tail = spliced(kind, args, at)
        result = CHANGES[kind](self.tree, *args)
        self.journal.append_parts(head, args[at], tail)
        return result

    def flush(self, fsync: bool) -> None:
        """Write (and optionally fsync) the buffered records; on failure, go out of service."""
        try:
            self.journal.flush(fsync)
        except OSError as exc:
            self.fail(f"journal write failed: {exc}")
            raise

    def write(self, room: bool) -> int:
        """Write the buffered records for a sync made later or elsewhere (zeroed room
        kept after them if ``room``: the bytes of room added); on failure, go out of
        service."""
        try:
            return self.journal.write(room)
        except OSError as exc:
            self.fail(f"journal write failed: {exc}")
            raise

    def fail(self, reason: str) -> None:
        log.critical("volume %r: %s; refusing every operation until it is reloaded",
                     self.name, reason)
        self.failed = reason
        self.forget_stats()
        self.journal.discard()

    def snapshot(self, durable_switch: bool = True) -> None:
        """Snapshot in this process: switch journals, write the tree, install it."""
        generation = self.begin_snapshot(durable_switch)
        path = os.path.join(self.directory, SNAPSHOT)
        size = snapshot.write_temp(snapshot.temp_path(path, generation), self.tree,
                                   generation)
        for old in self.install_snapshot(generation, size):
            finish(removing(old))

    def begin_snapshot(self, durable_switch: bool = True) -> int:
        """Send later changes to a new, empty journal; the generation whose snapshot must
        now be written from the tree as it is (the journal must be flushed).

        Recovery replays the old journal before the new one, so the old one must be
        whole before a change in the new one is durable.  With ``durable_switch`` (fsync
        policies ``always`` and ``batch``, whose next flush may fsync the new journal
        and acknowledge on it) the old journal is fdatasynced here -- under ``always``
        it has nothing unsynced -- and the new one's name made durable.  Without it
        (``never``: nothing is promised at a power cut) the loop does no fsync at all:
        the snapshot writer fdatasyncs the old journal before it writes, and installing
        the snapshot makes the new journal's name durable with its directory fsync.
        """
        return self.next_journal(durable_switch)

    def next_journal(self, durable_switch: bool) -> int:
        """Flush this journal and send later changes to a new one, of the next generation
        (the fsyncs ``durable_switch`` asks for: see :meth:`begin_snapshot`)."""
        generation = self.generation + 1
        self.journal.flush(durable_switch)
        journal = Journal.create(journal_path(self.directory, generation), durable_switch)
        if durable_switch:
            durable.sync_dir(self.directory)
        self.journal.close_fd()
        self.journal = journal
        self.generation = generation
        return generation

    def install_snapshot(self, generation: int, size: int) -> list[str]:
        """Put the written snapshot of ``generation`` in place; the journals it holds,
        which the caller deletes (:func:`.journal.removing`, a step at a time)."""
        path = os.path.join(self.directory, SNAPSHOT)
        snapshot.install(snapshot.temp_path(path, generation), path)
        self.snapshot_bytes = size
        return [journal_path(self.directory, gen)
                for gen in journal_generations(self.directory) if gen < generation]

    def close(self, fsync: bool = True) -> None:
        """Make everything durable and release the file descriptor."""
        if self.failed is None:
            self.flush(fsync)
        self.journal.close_fd()
