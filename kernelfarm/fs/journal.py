"""Files of checksummed records: the journals, written in batches (group commit).

A record is framed as ``<u32 length><u32 CRC-32 of payload><payload>`` (little endian),
the payload a msgpack object.  A crash can leave the last record half written (a torn
tail) or garbage after it; :func:`read_records` reads records up to the first frame that
does not check out, so :meth:`Journal.recovering` can cut the file there.  Everything after
a bad frame is discarded: once one frame is unreadable nothing behind it can be trusted.
Snapshots are such a stream with nothing before it (:func:`frame`, :func:`read_all`).

A journal file (format 2) starts with a 16-byte header, ``KFJ2``, a random 64-bit nonce
and the CRC-32 of both, and its records' CRCs start from that header CRC (the *seed*)
instead of 0.  The file is kept zero-filled ahead of its last record (up to
:data:`PREALLOC_MAX` at a time), so the turn's ``write`` lands in bytes that are already
part of the file and its ``fdatasync`` has no new size or block to commit: on ext4, 105
instead of 630 µs per small append and fdatasync, and half the CPU.  Recovery
finds the end of the log where the frames stop checking out; the zeros after it are
room, anything else there is damage and is cut off.  The seed ties every record to the
one file it was written for: a record left in a reused region (a file renamed over,
recycled, or copied) fails its CRC under the new header's seed, so it can never be
replayed as this journal's.  A journal without the header (format 1, written before
format 2) is read with seed 0 -- exactly its CRC-32 -- and never appended to: loading a
volume whose last journal is one moves its writes to a new generation
(:meth:`.volume.Volume.loading`).

:attr:`Journal.records` keeps encoded records; :meth:`Journal.write` writes what
was kept with one ``pwritev`` -- the kernel calls it once per loop turn, so every write of
that turn shares the one ``fdatasync`` that follows (:meth:`Journal.sync`, or a syncer
process given :meth:`Journal.sync_elsewhere`: :mod:`kernelfarm.kernel.syncer`).  The records kept
between two writes go to the file as one frame (a *group*): its payload is the msgpack
array of the records, so the turn pays one frame header, one CRC and one copy instead of
one per record (a lone record is framed alone, as before).  A group is whole or, torn,
cut whole at recovery -- no reply depends on part of one, since the turn's replies wait
for its sync.  Readers tell a group from a record by its first element: a record starts
with its kind (an int), a group with a record (:func:`.volume.replay`).  A kernelfarm from
before groups reads such a frame as one record it cannot apply and salvages the volume
read-only, changing nothing on disk.  A record with a big payload is buffered by
reference (:meth:`Journal.append_parts`): its data goes from the request's bytes object
to the file, never copied into a buffer first.

A journal is written, never read, while its kernel runs, so its pages are dropped from
the page cache once written back, :data:`CACHED_BEHIND` behind the end of the log
(``POSIX_FADV_DONTNEED``: it starts the writeback of what is dirty and drops what is
clean; in a kernel its syncer child does it, :data:`dropper`).  Not for the memory they
hold: for the memory the next writes take.  A log that only grows fills fresh page-cache
pages, and on a host that takes free guest memory back (a VM's balloon with free page
reporting) a fresh page's first touch costs a fault and a zeroing in the host: 2.3-2.6
ms per MiB written, against 0.3 ms into pages the guest just freed
(benchmarks/README.md, "The write path, sixth pass").  Dropped pages are reused by the
log's next writes.  Nothing of durability changes: dirty pages are never
dropped, only written back sooner.

The CRC-32 is zlib's (the same polynomial and values), computed by ISA-L
(``isal.isal_zlib.crc32``, carry-less multiplication): 0.06 ms per MiB where zlib 1.2.13
takes 0.56-0.67 ms, the biggest cost of a big record after the copy into the page cache.

The file descriptor is opened lazily and may be closed at any time (:meth:`close_fd`) to
bound the number of open files when a kernel holds many volumes.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import msgpack
from isal.isal_zlib import crc32

from kernelfarm.steps import STEP_BYTES, STEP_ITEMS, Steps

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
"""A record's frame: payload length, CRC-32 of the payload (from the file's seed)."""
FILE_HEADER = struct.Struct("<4sQI")
"""A format-2 journal's first bytes: magic, nonce, CRC-32 of magic and nonce (the seed)."""
MAGIC = b"KFJ2"
PREALLOC_MIN, PREALLOC_MAX = 4096, 1024 * 1024
"""Room zero-filled ahead of the log when a write that will be synced grows the file: as many
bytes as the log holds, within these bounds (a volume that writes little takes little
disk; a busy one commits a new size once per MiB)."""
ZEROS = memoryview(bytes(PREALLOC_MAX))
IOV_MAX = 1024
"""Buffers one ``pwritev`` takes (Linux's UIO_MAXIOV)."""
SCAN_BYTES = 1024 * 1024
"""Bytes read at a time when checking that a journal's tail holds only zeros."""
GROUP_RECORDS = 4096
"""Records framed together at most: a group is read and replayed whole, so this bounds
what one step of a replay does (:func:`replaying`)."""
CACHED_BEHIND = 32 * 1024 * 1024
"""Bytes of the log kept in the page cache behind its end; the rest is dropped once
written back (:meth:`Journal._drop_behind`), every :data:`DROP_STEP` bytes of log."""
DROP_STEP = 8 * 1024 * 1024

Buffer = bytes | bytearray | memoryview


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), crc32(payload)) + payload


def frame_head(parts: Sequence[Buffer]) -> bytes:
    """The frame header of a payload that is ``parts`` one after another (a snapshot's big
    file, written from its own buffers): the CRC runs over the parts in turn, never over
    a joined copy."""
    crc = 0
    for part in parts:
        crc = crc32(part, crc)
    return HEADER.pack(sum(map(len, parts)), crc)


def array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` objects."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def read_records(fh: BinaryIO, size: int, seed: int = 0) -> Iterator[tuple[Any, int]]:
    """``(record, end offset)`` for each good record from the current position of ``fh``.

    Stops quietly at the end of the file or at the first frame that does not check out
    (its CRC computed from ``seed``); ``size`` (the file's size) bounds every read, so a
    damaged length field cannot make it allocate more than the file holds.
    """
    pos = fh.tell()
    while pos + HEADER.size <= size:
        length, crc = HEADER.unpack(fh.read(HEADER.size))
        end = pos + HEADER.size + length
        if length == 0 or end > size:
            return
        payload = fh.read(length)
        if len(payload) < length or crc32(payload, seed) != crc:
            return
        try:
            record = msgpack.unpackb(payload, use_list=False, raw=False)
        except Exception:  # msgpack documents that garbage may raise anything
            return
        yield record, end
        pos = end


def read_all(path: str) -> Iterator[Any]:
    """Every record of a file that must be whole (a snapshot); raises at any damage."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        good = 0
        for record, good in read_records(fh, size):  # noqa: B007 - read after the loop
            yield record
        if good != size:
            raise ValueError(f"{path}: damaged at byte {good} of {size}")


def new_header() -> tuple[bytes, int]:
    """A fresh journal header and its seed."""
    magic_nonce = MAGIC + os.urandom(8)
    seed = crc32(magic_nonce)
    return magic_nonce + seed.to_bytes(4, "little"), seed


def open_log(fh: BinaryIO, size: int) -> int | None:
    """Position ``fh`` at a journal's first record; its seed, or ``None`` for format 1
    (no header: records from byte 0, CRCs from 0)."""
    fh.seek(0)
    if size >= FILE_HEADER.size:
        magic, nonce, seed = FILE_HEADER.unpack(fh.read(FILE_HEADER.size))
        if magic == MAGIC and crc32(magic + nonce.to_bytes(8, "little")) == seed:
            return int(seed)
        fh.seek(0)
    return None


def zeros_after(fh: BinaryIO, good: int, size: int) -> bool:
    """Whether bytes ``good`` to ``size`` of ``fh`` are all zeros (room, not damage)."""
    fh.seek(good)
    while good < size:
        chunk = fh.read(min(SCAN_BYTES, size - good))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        good += len(chunk)
    return True


def journal_records(path: str) -> Iterator[Any]:
    """The good records of a journal of either format, up to the first bad frame."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        seed = open_log(fh, size)
        for record, _end in read_records(fh, size, seed or 0):
            yield record


def replaying(fh: BinaryIO, size: int, apply: Callable[[Any], None],
              seed: int) -> Steps[int]:
    """Feed every good record from the position of ``fh`` to ``apply``, a step at a
    time (see :mod:`kernelfarm.steps`); the offset after the last good record."""
    good = step_start = fh.tell()
    count = 0
    for record, good in read_records(fh, size, seed):  # noqa: B007 - read after the loop
        apply(record)
        count += 1
        if count % STEP_ITEMS == 0 or good - step_start >= STEP_BYTES:
            step_start = good
            yield
    return good


def replaying_whole(path: str, apply: Callable[[Any], None]) -> Steps[None]:
    """Replay a journal that must be whole (one a later generation follows); raises at
    any damage (zeros after the last record are its preallocated room, not damage)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        seed = open_log(fh, size)
        good = yield from replaying(fh, size, apply, seed or 0)
        if not zeros_after(fh, good, size):
            raise ValueError(f"{path}: damaged at byte {good} of {size}")


TRUNCATE_STEP = 8 * 1024 * 1024
"""Bytes a superseded journal is cut by per step of :func:`removing`."""


def removing(path: str) -> Steps[None]:
    """Delete a superseded journal a step at a time.

    ext4 frees a file's blocks inside ``unlink``: 160 ms for a 512 MiB journal, measured
    on the loop while a snapshot was installed.  Cut down ``TRUNCATE_STEP`` at a time
    (a few ms each) and then unlinked, it never holds the loop that long.  A crash half
    way leaves a shorter superseded journal, which the next load deletes unread.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        while size > TRUNCATE_STEP:
            size -= TRUNCATE_STEP
            os.ftruncate(fd, size)
            yield
    finally:
        os.close(fd)
    os.unlink(path)


def drop_cached(fd: int, end: int) -> None:
    """Ask the host to write back bytes 0 to ``end`` of ``fd`` and drop them from the page
    cache.  Pages still dirty or being written back stay until a later call: each covers
    the file from its start (the host walks only the pages still cached, a bounded
    number).  Advice only: a refusal changes nothing written."""
    try:
        os.posix_fadvise(fd, 0, end, os.POSIX_FADV_DONTNEED)
    except OSError as exc:  # not a file the host caches (none the farm writes)
        log.debug("page cache advice refused: %s", exc)


dropper: Callable[[int, int], None] = drop_cached
"""Who runs :func:`drop_cached` for a journal's written log: by default the caller, on
its loop; a kernel with a syncer child hands it there at boot
(:meth:`kernelfarm.kernel.syncer.Syncer.drop_behind`), since the writeback it starts
can wait on the disk for milliseconds, and costs CPU the loop need not spend."""


def write_at(fd: int, buffers: Sequence[Buffer], offset: int, size: int = -1) -> None:
    """Write every byte of ``buffers`` (``size`` in all, if the caller knows) at
    ``offset``.  ``pwritev`` may write less, and takes at most :data:`IOV_MAX` buffers;
    the buffers go to it as they are, and are sliced only after a short write (wrapping
    each in a view first was about 1 µs of a turn that writes one small record)."""
    if size < 0:
        size = sum(map(len, buffers))
    while size:
        written = os.pwritev(fd, buffers if len(buffers) <= IOV_MAX else buffers[:IOV_MAX],
                             offset)
        size -= written
        if size:
            offset += written
            buffers = _unwritten(buffers, written)


def _unwritten(buffers: Sequence[Buffer], written: int) -> list[memoryview]:
    """What is left of ``buffers`` after the first ``written`` bytes (no empty ones)."""
    todo = [memoryview(b) for b in buffers if len(b)]
    while todo and written >= len(todo[0]):
        written -= len(todo.pop(0))
    if written:
        todo[0] = todo[0][written:]
    return todo


class Journal:
    """One volume's journal file (format 2): buffered appends, one write (and fsync)
    per flush, zeros kept ahead of the log."""

    def __init__(self, path: str, size: int, allocated: int = 0, seed: int = 0) -> None:
        self.path = path
        self.size = size            # end of the last record written
        self.allocated = max(size, allocated)  # the file's length: zeros after size
        self.seed = seed
        self.records: list[bytes] = []
        """Encoded records kept for the next write, after ``_chunks``: the owner appends
        each record's payload here, already packed (so a record that cannot be encoded
        fails before the change it describes is made); the write frames them as a group."""
        self._chunks: list[Buffer] = []  # framed groups and big payloads, in order
        self._chunked = 0           # bytes in _chunks
        self._fd = -1
        self._dropped = size        # the page cache was last asked to drop the log up to here
        self.unsynced = False       # written, not yet fsynced by this process
        self.sync_asked = False     # every write handed to be synced (sync_elsewhere)

    @classmethod
    def create(cls, path: str, durable: bool) -> Journal:
        """A new, empty journal file (it must not exist); with ``durable`` its header is
        fsynced (its name is durable once the caller fsyncs the directory)."""
        header, seed = new_header()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_at(fd, [header], 0)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return cls(path, len(header), len(header), seed)

    @classmethod
    def recovering(cls, path: str, apply: Callable[[Any], None]) -> Steps[Journal | None]:
        """Feed every good record to ``apply`` (a step at a time), then cut a torn or
        corrupt tail off; the journal to append to, or ``None`` if the file is in format
        1 (its records were applied; the caller must move writes to a new file)."""
        with open(path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            seed = open_log(fh, size)
            good = yield from replaying(fh, size, apply, seed or 0)
            if not zeros_after(fh, good, size):
                log.warning("journal %s: cutting %d damaged bytes after byte %d",
                            path, size - good, good)
                fh.truncate(good)
                fh.flush()  # truncate flushes too; said here so the fsync is plainly safe
                os.fsync(fh.fileno())
                size = good
        if seed is None:
            return None
        return cls(path, good, size, seed)

    @property
    def pending(self) -> int:
        """Bytes buffered and not written: exact once framed, and for kept records as if
        each were framed alone (a group frames them in fewer)."""
        records = self.records
        return self._chunked + sum(map(len, records)) + HEADER.size * len(records)

    def append_parts(self, head: bytes, data: Buffer, tail: bytes) -> None:
        """Buffer one record whose payload is ``head + data + tail``, ``data`` by
        reference: it must not change until the next flush (request bytes never do)."""
        self._frame_records()
        crc = crc32(tail, crc32(data, crc32(head, self.seed)))
        framed = HEADER.pack(len(head) + len(data) + len(tail), crc) + head
        self._chunks.append(framed)
        self._chunks.append(data)
        self._chunks.append(tail)
        self._chunked += len(framed) + len(data) + len(tail)

    def _frame_records(self) -> None:
        """Frame the kept records: one alone, more as groups of :data:`GROUP_RECORDS`
        at most (one header, one CRC and one join per group)."""
        records = self.records
        if not records:
            return
        self.records = []
        seed, chunks = self.seed, self._chunks
        if len(records) == 1:  # a turn's one change (a round trip's): one buffer
            body = records[0]
            chunks.append(HEADER.pack(len(body), crc32(body, seed)) + body)
            self._chunked += HEADER.size + len(body)
            return
        for at in range(0, len(records), GROUP_RECORDS):
            part = records[at:at + GROUP_RECORDS] if len(records) > GROUP_RECORDS else records
            if len(part) == 1:
                head, body = b"", part[0]
            else:
                head, body = array_header(len(part)), b"".join(part)
            length = len(head) + len(body)
            chunks.append(HEADER.pack(length, crc32(body, crc32(head, seed))) + head)
            chunks.append(body)
            self._chunked += HEADER.size + length

    def flush(self, fsync: bool) -> None:
        """Write the buffered records and, if ``fsync``, ``fdatasync`` them (:meth:`write`
        with room, then :meth:`sync`)."""
        self.write(room=fsync)
        if fsync:
            self.sync()

    def write(self, room: bool) -> int:
        """Write the buffered records (one ``pwritev``) into the page cache; the bytes of
        zeroed room it added after them (disk space no record has taken yet).

        A write that grows the file also zero-fills room after it when ``room`` is asked
        (an fdatasync will follow, now or later: :meth:`_preallocate`), unless the write
        is big next to that room (a stream of big records would write everything twice,
        and its own size dwarfs the commit).

        On failure the buffer is dropped and the error raised: the caller must stop
        using this journal, since what reached the disk is unknown until it is reread.
        """
        if self.records:
            self._frame_records()
        pending = self._chunked
        if not pending:
            return 0
        buffers, self._chunks, self._chunked = self._chunks, [], 0
        fd = self._fd
        if fd < 0:
            fd = self._open_fd()
        write_at(fd, buffers, self.size, pending)
        self.size += pending
        self.unsynced = True
        self.sync_asked = False
        if self.size - self._dropped >= CACHED_BEHIND + DROP_STEP:
            self._drop_behind(fd)
        if self.size <= self.allocated:
            return 0
        self.allocated = self.size
        if room:
            self._preallocate(fd, pending)
        return self.allocated - self.size

    def _drop_behind(self, fd: int) -> None:
        """Have the log up to :data:`CACHED_BEHIND` before its end written back and
        dropped from the page cache (by :data:`dropper`)."""
        self._dropped = end = self.size - CACHED_BEHIND
        dropper(fd, end)

    def sync(self) -> None:
        """``fdatasync`` what was written since this process last synced the file."""
        if self.unsynced:
            os.fdatasync(self._open_fd())
            self.unsynced = False

    def sync_elsewhere(self) -> int:
        """The open descriptor (opened if need be), handed to whoever syncs it now: the
        group commit, inline or in its syncer process (:mod:`kernelfarm.kernel.syncer`),
        which holds its own reference to the file.  ``unsynced`` stays true (this
        process does not know when that sync is done: a journal switched by a snapshot
        is synced here first), and ``sync_asked`` is true until the next write: the
        descriptor may be closed without a sync of its own (:meth:`close_fd`)."""
        self.sync_asked = True
        return self._open_fd()

    def _preallocate(self, fd: int, pending: int) -> None:
        """Zero-fill room after the log, as big as the log (within the bounds), if the
        last write was small next to it.  Best effort: on a full disk the room is what
        fitted, and the records' own writes get ENOSPC as they would have anyway."""
        room = min(PREALLOC_MAX, max(PREALLOC_MIN, self.size))
        if 4 * pending > room:
            return
        try:
            write_at(fd, [ZEROS[:room]], self.size)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self.allocated = os.fstat(fd).st_size
            return
        self.allocated = self.size + room

    def close_fd(self) -> None:
        """Give the descriptor back; the next flush reopens it.  Writes must be flushed."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def discard(self) -> None:
        """Forget unwritten records (the volume is being dropped after a failure)."""
        self.records = []
        self._chunks = []
        self._chunked = 0
        self.close_fd()

    def _open_fd(self) -> int:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        return self._fd

    @property
    def is_open(self) -> bool:
        return self._fd >= 0
