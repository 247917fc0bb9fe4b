"""Durable writes to the host file system: the two idioms every file under the data dir needs.

A power cut keeps only what reached the disk.  Two rules follow, and POSIX states both:

- a file's bytes are on disk only after ``fsync``/``fdatasync`` of that file, and bytes
  still in a user-space buffer (Python's ``open()``) are not even in the page cache yet:
  flush first, then fsync;
- a *name* (a file or directory created, renamed or unlinked) is on disk only after an
  ``fsync`` of the directory that holds it.  fsyncing the file does not make its name
  durable, nor does fsyncing a new directory make the directory's own name durable.

So: :func:`write_file` (temp file, write, fsync, rename, fsync the directory) for a small
file that must be whole or absent; :func:`makedirs` (fsync each parent whose entries a
``mkdir`` changed); :func:`remove` and :func:`sync_dir` for the rest.  This module is a leaf
(it imports nothing of kernelfarm), so any layer may use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PathLike = str | Path


def sync_dir(path: PathLike) -> None:
    """fsync a directory, so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(path: PathLike) -> None:
    """fdatasync the file at ``path`` (its bytes and size, not its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def create_file(path: PathLike, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` (which must not exist) holding ``data``, fsynced.

    Only the file's content is made durable here; its name is durable once the caller
    fsyncs the directory (often after creating several files there, with one fsync).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: PathLike, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    After a crash at any point the file holds either its old content or all of ``data``:
    the bytes go to ``path.tmp`` and are fsynced before the rename (else the rename could
    reach the disk before the bytes, leaving an empty file), and the directory is fsynced
    after it (else the rename itself could be lost).
    """
    path = os.fspath(path)
    tmp = path + ".tmp"
    discard(tmp)
    try:
        create_file(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    sync_dir(os.path.dirname(path) or ".")


def discard(path: PathLike) -> bool:
    """Unlink ``path`` if it exists (not durably: a leftover or a temporary file)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove(path: PathLike) -> bool:
    """Unlink ``path`` durably (fsync its directory); False if it did not exist."""
    if not discard(path):
        return False
    sync_dir(os.path.dirname(os.fspath(path)) or ".")
    return True


def makedirs(path: PathLike, mode: int = 0o755) -> None:
    """``os.makedirs(path, exist_ok=True)``, durably: every directory this call creates has
    its name fsynced into its parent, so a directory that a later durable write relies on
    cannot vanish in a power cut.  The leaf's parent is fsynced even when the leaf exists:
    a process that crashed between its ``mkdir`` and that fsync leaves a directory that is
    visible but not yet durable.  An error looking a directory up (EIO) is raised, never
    taken for "missing" (``os.path.isdir`` would, and climb to mkdir an existing parent)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if not is_dir(path):
        if parent != path and not is_dir(parent):
            makedirs(parent, mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not is_dir(path):
                raise
    sync_dir(parent)


def is_dir(path: PathLike) -> bool:
    """``os.path.isdir`` that raises every error but "no such file"."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
