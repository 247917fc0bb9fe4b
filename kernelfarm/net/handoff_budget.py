"""How many failed token checks a hand-off peer may make: a token bucket per process.

A front-end on the hand-off socket sends a token with each request, and a refused token
tells the sender it guessed wrong.  Bounding the failures per peer process (shared by all
its connections, found by ``SO_PEERCRED``) keeps a guesser from learning faster by opening
more connections; the budgets of peers that have not failed lately are forgotten first.
"""

from __future__ import annotations

import errno
import time

from kernelfarm.errors import posix

FAILURE_BURST = 10
FAILURE_RATE = 2.0
"""Failed token checks one peer process may make: ``FAILURE_BURST`` at once, then
``FAILURE_RATE`` per second; past that its requests carrying a token are refused
``EAGAIN`` unchecked, so a guesser learns nothing faster, however it asks."""

PEERS_REMEMBERED = 256
"""Peer processes whose failure budget is kept; full budgets are forgotten first."""


class FailureBudget:
    """A token bucket of failed token checks for one peer process."""

    __slots__ = ("left", "stamp")

    def __init__(self) -> None:
        self.left = float(FAILURE_BURST)
        self.stamp = time.monotonic()

    def refill(self) -> float:
        now = time.monotonic()
        self.left = min(float(FAILURE_BURST), self.left + (now - self.stamp) * FAILURE_RATE)
        self.stamp = now
        return self.left

    def admit(self) -> None:
        """Refuse (``EAGAIN``) while no failure is left to spend."""
        left = self.refill()
        if left < 1:
            raise posix(errno.EAGAIN, f"too many failed token checks from this process: "
                        f"retry in {(1 - left) / FAILURE_RATE:.1f} s")

    def spend(self) -> None:
        self.left -= 1


class FailureBudgets:
    """The failure budget of each peer process, at most ``PEERS_REMEMBERED`` of them."""

    def __init__(self) -> None:
        self.budgets: dict[int, FailureBudget] = {}

    def of(self, pid: int) -> FailureBudget:
        """The failure budget of peer process ``pid`` (shared by its connections)."""
        budget = self.budgets.get(pid)
        if budget is None:
            if len(self.budgets) >= PEERS_REMEMBERED:
                self.budgets = {p: b for p, b in self.budgets.items()
                                if b.refill() < FAILURE_BURST}
            budget = self.budgets[pid] = FailureBudget()
        return budget
