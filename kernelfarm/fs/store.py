"""Where volumes live on the host: ``<data_dir>/fs/<slot:05d>/<volume dir>/``.

Grouping volumes by hash slot is what lets a slot change kernels: every kernel of a farm
shares the data dir, so handing a slot over is "the old owner flushes and forgets it, the
new owner loads the slot's directory" (:meth:`FsSubsystem.release_slot` and
:meth:`FsSubsystem.load_slots`), with no data copied.

A volume name is never used as a host path.  Its directory is named by a hash of the
name (with a short prefix of its plainest characters, for people reading the tree), and
the name itself is kept in a file inside; so ``..``, slashes, leading dots, unicode,
names that differ only in case, or names longer than the host allows all map to one safe
directory name.  Directories being created or removed carry a ``.tmp-``/``.del-`` prefix
until a rename makes the change atomic; a crash leaves only those, and loading a slot
clears them away.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import string
from pathlib import Path

from kernelfarm import durable

log = logging.getLogger(__name__)

SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
READABLE_PREFIX = 24
CREATING, REMOVING = ".tmp-", ".del-"


def slot_dir(data_dir: Path | str, slot: int) -> str:
    return os.path.join(data_dir, "fs", f"{slot:05d}")


def slot_numbers(data_dir: Path | str) -> set[int]:
    """The slots that have a directory (and so may hold volumes)."""
    try:
        names = os.listdir(os.path.join(data_dir, "fs"))
    except FileNotFoundError:
        return set()
    return {int(name) for name in names if len(name) == 5 and name.isdigit()}


def volume_dirname(name: str) -> str:
    """A directory name for volume ``name``: safe, at most 57 bytes, one per name."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=16).hexdigest()
    readable = "".join(c for c in name[:READABLE_PREFIX] if c in SAFE_CHARS)
    return f"{readable}-{digest}" if readable else digest


def volume_dirs(slot_path: str) -> list[str]:
    """The volume directories of a slot, after clearing what a crash left half done.

    A slot without a directory has no volumes; any other error listing it (the path is
    not a directory, I/O error) is raised, since the slot's volumes are then unknown.
    """
    try:
        names = sorted(os.listdir(slot_path))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = os.path.join(slot_path, name)
        if name.startswith((CREATING, REMOVING)):
            log.info("removing %s, left by an interrupted volume create or remove", path)
            shutil.rmtree(path, ignore_errors=True)
        elif durable.is_dir(path):  # an I/O error is raised, not taken for "no volume"
            found.append(path)
    return found


def clear(path: str) -> None:
    """Remove a leftover directory (from an earlier interrupted create or remove)."""
    if os.path.lexists(path):
        shutil.rmtree(path)
