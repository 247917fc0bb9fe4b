"""An append-only file of checksummed records, written in batches (group commit).

A record is framed as ``<u32 length><u32 CRC-32 of payload><payload>`` (little endian),
the payload a msgpack object.  A crash can leave the last record half written (a torn
tail) or garbage after it; :func:`read_records` reads records up to the first frame that
does not check out, so :meth:`Journal.recovering` can cut the file there.  Everything after
a bad frame is discarded: once one frame is unreadable nothing behind it can be trusted.

:meth:`Journal.append` only encodes into a buffer; :meth:`Journal.flush` writes the
buffer with one ``write`` and, when asked, one ``fdatasync`` — the kernel calls it once
per loop turn, so every write of that turn shares the fsync.

The file descriptor is opened lazily and may be closed at any time (:meth:`close_fd`) to
bound the number of open files when a kernel holds many volumes.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from typing import Any, BinaryIO, Callable, Iterator

import msgpack

from kernelfarm.steps import STEP_BYTES, STEP_ITEMS, Steps

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(fh: BinaryIO, size: int) -> Iterator[tuple[Any, int]]:
    """``(record, end offset)`` for each good record from the current position of ``fh``.

    Stops quietly at the end of the file or at the first frame that does not check out;
    ``size`` (the file's size) bounds every read, so a damaged length field cannot make
    it allocate more than the file holds.
    """
    pos = fh.tell()
    while pos + HEADER.size <= size:
        length, crc = HEADER.unpack(fh.read(HEADER.size))
        end = pos + HEADER.size + length
        if length == 0 or end > size:
            return
        payload = fh.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
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


def replaying(fh: BinaryIO, size: int, apply: Callable[[Any], None]) -> Steps[int]:
    """Feed every good record from the position of ``fh`` to ``apply``, a step at a
    time (see :mod:`kernelfarm.steps`); the offset after the last good record."""
    good = step_start = fh.tell()
    count = 0
    for record, good in read_records(fh, size):  # noqa: B007 - read after the loop
        apply(record)
        count += 1
        if count % STEP_ITEMS == 0 or good - step_start >= STEP_BYTES:
            step_start = good
            yield
    return good


def replaying_whole(path: str, apply: Callable[[Any], None]) -> Steps[None]:
    """Replay a journal that must be whole (one a later generation follows); raises at
    any damage."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        good = yield from replaying(fh, size, apply)
    if good != size:
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


class Journal:
    """One volume's journal file: buffered appends, one write (and fsync) per flush."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size            # bytes on disk
        self._buffer = bytearray()  # encoded records not yet written
        self._fd = -1
        self.unsynced = False       # written but not yet fsynced

    @classmethod
    def recovering(cls, path: str, apply: Callable[[Any], None]) -> Steps[Journal]:
        """Feed every good record to ``apply`` (a step at a time), then cut a torn or
        corrupt tail off."""
        with open(path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            good = yield from replaying(fh, size, apply)
            if good < size:
                log.warning("journal %s: cutting %d damaged bytes after byte %d",
                            path, size - good, good)
                fh.truncate(good)
                fh.flush()  # truncate flushes too; said here so the fsync is plainly safe
                os.fsync(fh.fileno())
        return cls(path, good)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def append(self, payload: bytes) -> None:
        """Buffer one record, already packed (so a record that cannot be encoded fails
        before the change it describes is made)."""
        self._buffer += HEADER.pack(len(payload), zlib.crc32(payload))
        self._buffer += payload

    def flush(self, fsync: bool) -> None:
        """Write the buffered records (one ``write``) and optionally ``fdatasync``.

        On failure the buffer is dropped and the error raised: the caller must stop
        using this journal, since what reached the disk is unknown until it is reread.
        """
        if self._buffer:
            buffer, self._buffer = self._buffer, bytearray()
            fd = self._open_fd()
            view = memoryview(buffer)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            self.size += len(buffer)
            self.unsynced = True
        if fsync and self.unsynced:
            os.fdatasync(self._open_fd())
            self.unsynced = False

    def close_fd(self) -> None:
        """Give the descriptor back; the next flush reopens it.  Writes must be flushed."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def discard(self) -> None:
        """Forget unwritten records (the volume is being dropped after a failure)."""
        self._buffer = bytearray()
        self.close_fd()

    def _open_fd(self) -> int:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_CLOEXEC, 0o600)
        return self._fd

    @property
    def is_open(self) -> bool:
        return self._fd >= 0
