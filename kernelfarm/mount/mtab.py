"""Is a path a mount point, and of which device?  Read from ``/proc/self/mounts`` and
``mountinfo``, not ``os.path.ismount`` or ``stat``: a FUSE mount whose process died answers
``stat`` with ``ENOTCONN``, and ``ismount`` then says "not mounted" about exactly the mount
that most needs unmounting; and the process serving a mount must not ``stat`` its own
mount point (the kernel would wait on that very process)."""

from __future__ import annotations

import os

MOUNTS = "/proc/self/mounts"
MOUNTINFO = "/proc/self/mountinfo"
FS_TYPE = "fuse.kernelfarm"
"""What the table says of a kernelfarm mount (``subtype=kernelfarm``), dead or alive."""


def _unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as ``\\ooo``."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return fs_type(path) is not None


def fs_type(path: str | os.PathLike[str]) -> str | None:
    """The type of what is mounted at ``path`` last (the mount on top), or None."""
    target = os.path.abspath(path)
    found = None
    with open(MOUNTS) as table:
        for line in table:
            fields = line.split()
            if len(fields) > 2 and _unescape(fields[1]) == target:
                found = fields[2]
    return found


def device_of(path: str | os.PathLike[str]) -> str | None:
    """``MAJOR:MINOR`` of what is mounted at ``path`` last (the mount on top), or None."""
    target = os.path.abspath(path)
    device = None
    with open(MOUNTINFO) as table:
        for line in table:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                device = fields[2]
    return device
