"""The mount's attribute cache: what the farm last said about each inode, and whether that
answer may still be given without asking again.

The kernel drops its cached attributes of a directory whenever a name in it changes, and
with ``default_permissions`` it must know the directory's mode before the next path walk
through it: one ``getattr`` per file made, a farm round trip each.  The mount can do
better, since it can fetch the attributes in the same round trip as the change itself
(``create`` sends the parent's ``fs.stat`` right behind its ``fs.create``).

An answer is *fresh* while it is younger than the attribute timeout and nothing this mount
did to the inode since may have changed it; a fresh answer is given again with only the
rest of its timeout, so what a program sees is never older than the timeout, as if the
kernel had cached it.  Every change of this mount marks what it changes (:meth:`changed`),
and a stat that was asked before a change and answered after it is not taken as fresh
(:meth:`version` is read when the stat is sent).
"""

from __future__ import annotations

import time
from typing import Any, Callable

Stat = dict[str, Any]


class AttrCache:
    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._last: dict[int, Stat] = {}
        self._fresh_until: dict[int, float] = {}
        self._versions: dict[int, int] = {}

    def version(self, ino: int) -> int:
        """How many changes this mount made to ``ino``: read it before sending a stat."""
        return self._versions.get(ino, 0)

    def put(self, ino: int, st: Stat, version: int | None) -> None:
        """The farm answered ``st`` for ``ino``; it is fresh if ``version`` (read before
        the stat was sent) is still current, ``None``: never fresh."""
        self._last[ino] = st
        if version is not None and version == self.version(ino):
            self._fresh_until[ino] = self._clock() + self.timeout
        else:
            self._fresh_until.pop(ino, None)

    def last(self, ino: int) -> Stat | None:
        """The last answer, however old (for what only this mount can know newer)."""
        return self._last.get(ino)

    def fresh(self, ino: int) -> tuple[Stat, float] | None:
        """A fresh answer and the seconds it stays fresh, else ``None``."""
        until = self._fresh_until.get(ino)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._fresh_until[ino]
            return None
        return self._last[ino], left

    def changed(self, *inos: int) -> None:
        """This mount is changing ``inos``: what was fetched so far is not fresh."""
        for ino in inos:
            self._versions[ino] = self.version(ino) + 1
            self._fresh_until.pop(ino, None)

    def forget(self, ino: int) -> None:
        self._last.pop(ino, None)
        self._fresh_until.pop(ino, None)
        self._versions.pop(ino, None)
