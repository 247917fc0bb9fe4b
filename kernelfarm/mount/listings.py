"""Which names a directory holds, kept by the mount for a short while: a lookup of a name
that is not there is answered ``ENOENT`` without a farm round trip.

Every file a program creates costs the kernel a ``lookup`` of its name first, and the
farm's answer is always "no such name".  A directory this mount made is known to be
empty, and one it listed holds the names listed; with the names this mount added and
removed since, that set answers those lookups for ``timeout`` seconds after it was
taken, so a name another client makes shows here within ``timeout`` (as the kernel's
entry cache hides a name another client removed).  A create is never misled: it is
``fs.create``, which opens a file that is there after all, or fails ``EEXIST`` for
``O_EXCL``.

A listing is taken again when a lookup misses in a directory whose listing has expired
and had answered lookups before (a directory where names are being made); it is kept
only if no change of this mount to that directory was answered while it was on its way
(its reply could predate that change, see :meth:`Listings.version`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass
class Listing:
    names: set[str]
    until: float            # fresh until (the clock's time)
    answered: bool = False  # it spared a lookup: worth taking again once expired


class Listings:
    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._listings: dict[int, Listing] = {}
        self._versions: dict[int, int] = {}

    def version(self, directory: int) -> int:
        """How many changes of this mount to ``directory`` were answered: read it before
        sending ``fs.listdir``, give it to :meth:`put` with the answer."""
        return self._versions.get(directory, 0)

    def put(self, directory: int, names: Iterable[str], version: int) -> None:
        if version != self.version(directory):
            return  # a change of ours was answered meanwhile: the listing may predate it
        old = self._listings.get(directory)
        self._listings[directory] = Listing(set(names), self._clock() + self.timeout,
                                            old is not None and old.answered)

    def absent(self, directory: int, name: str) -> float | None:
        """If a fresh listing says ``name`` is not in ``directory``: for how long more."""
        listing = self._listings.get(directory)
        if listing is None or name in listing.names:
            return None
        left = listing.until - self._clock()
        if left <= 0:
            return None
        listing.answered = True
        return left

    def worth_taking(self, directory: int) -> bool:
        """An expired listing that answered lookups: take it again."""
        listing = self._listings.get(directory)
        return listing is not None and listing.answered and listing.until <= self._clock()

    def added(self, directory: int, name: str) -> None:
        """This mount's change made ``name`` in ``directory`` (answered by the farm)."""
        self._versions[directory] = self.version(directory) + 1
        listing = self._listings.get(directory)
        if listing is not None:
            listing.names.add(name)

    def removed(self, directory: int, name: str) -> None:
        self._versions[directory] = self.version(directory) + 1
        listing = self._listings.get(directory)
        if listing is not None:
            listing.names.discard(name)

    def forget(self, directory: int) -> None:
        """The directory is gone or forgotten by the kernel (its version stays, so that
        a listing still on its way is judged as any other)."""
        self._listings.pop(directory, None)
