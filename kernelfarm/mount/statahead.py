"""Stat-ahead: when a program looks up the names of a directory one after another in the
order this mount came to know them (made them, or looked them up), the next ones' stats
go to the farm in the same round trip as the one asked for.

The kernel forgets a name after ``entry_timeout`` and asks again (``lookup``); a program
stat-ing many files it made a while ago pays a farm round trip for each.  As read-ahead
does for a file's blocks, :class:`StatAhead` spots a walk through a directory's names
(a miss on the name right after the last one fetched) and fetches a window of the next
names with it, doubling the window while the walk goes on.  The answers are kept in the
attribute cache (:mod:`.attrcache`), fresh for ``attr_timeout`` like any other: what a
program sees is never older than it.  A lookup that does not follow a walk fetches only
its own name, so random lookups cost nothing extra.
"""

from __future__ import annotations

from typing import Callable


class StatAhead:
    def __init__(self, first: int = 8, most: int = 128) -> None:
        self.first = first
        self.most = most
        self._next: dict[int, tuple[str, int]] = {}  # dir -> (name expected next, window)

    def plan(self, directory: int, name: str,
             after: Callable[[int], list[tuple[str, int]]]) -> list[int]:
        """The inodes to fetch with ``name`` (a lookup in ``directory`` that must ask the
        farm); ``after(n)``: up to ``n`` (name, inode) that follow ``name``, in order."""
        expected, window = self._next.get(directory, ("", 0))
        window = min(max(window * 2, self.first), self.most) if name == expected else 0
        names = after(window + 1)  # the window, and the name a walk would miss next
        if len(names) > window:
            self._next[directory] = (names[window][0], window)
        else:
            self._next.pop(directory, None)
        return [ino for _, ino in names[:window]]

    def forget(self, directory: int) -> None:
        self._next.pop(directory, None)
