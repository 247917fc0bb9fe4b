"""Is a path a mount point?  Read from ``/proc/self/mounts``, not ``os.path.ismount``:
a FUSE mount whose process died answers ``stat`` with ``ENOTCONN``, and ``ismount``
then says "not mounted" about exactly the mount that most needs unmounting."""

from __future__ import annotations

import os

MOUNTS = "/proc/self/mounts"


def _unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as ``\\ooo``."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def is_mounted(path: str | os.PathLike[str]) -> bool:
    target = os.path.abspath(path)
    with open(MOUNTS) as table:
        return any(_unescape(line.split()[1]) == target for line in table if line.strip())
