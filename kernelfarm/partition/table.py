"""The slot table: which kernel owns each of the 16384 slots, at which epoch.

The supervisor holds the authoritative table, ships it to clients as ``cluster.map`` in the
compact range encoding, and hands each kernel the mask of its own slots.  The epoch grows on
every change so a client or kernel can tell a stale table from a fresh one by one integer.
Tables are never mutated: a change builds a new table, so a reader never sees half a move.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import TYPE_CHECKING, Any

from kernelfarm.partition.slots import NSLOTS

if TYPE_CHECKING:
    from kernelfarm.partition.rebalance import Move

MAX_KERNEL_ID = 2**31 - 1
"""Largest kernel id: owners are C ints (``array('i')``), 64 KiB per table, not 16384 objects."""


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """Reject non-ints (``bool`` included: ``True`` is not a kernel id) and out-of-range ints."""
    if type(value) is not int:
        raise ValueError(f"{what} must be an int, not {type(value).__name__}: {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is out of range [{low}, {high}]")
    return value


def _check_epoch(epoch: Any) -> int:
    if type(epoch) is not int or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, not {epoch!r}")
    return epoch


class SlotTable:
    """An epoch plus the owner kernel id of every slot.

    Owners live in one flat ``array('i')`` indexed by slot, so ``owner(slot)`` is a single
    index and the table stays 64 KiB whatever the number of kernels.
    """

    __slots__ = ("_epoch", "_owners")

    def __init__(self, epoch: int, owners: Iterable[int]) -> None:
        self._epoch = _check_epoch(epoch)
        try:
            table = array("i", owners)
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"slot owners must be kernel ids (ints >= 0): {exc}") from None
        if len(table) != NSLOTS:
            raise ValueError(f"a slot table needs {NSLOTS} owners, got {len(table)}")
        if min(table) < 0:
            raise ValueError(f"kernel id {min(table)} is negative")
        self._owners = table

    @property
    def epoch(self) -> int:
        """Grows with every change; the larger of two tables' epochs is the newer table."""
        return self._epoch

    # -- lookups -----------------------------------------------------------------------------

    def owner(self, slot: int) -> int:
        """The kernel that owns ``slot`` (checked: a negative index must not wrap around)."""
        if not 0 <= slot < NSLOTS:
            raise ValueError(f"slot {slot} is out of range [0, {NSLOTS - 1}]")
        return self._owners[slot]

    def slots_of(self, kernel_id: int) -> list[int]:
        """The slots ``kernel_id`` owns, ascending."""
        return [slot for slot, owner in enumerate(self._owners) if owner == kernel_id]

    def counts(self) -> dict[int, int]:
        """Slots per kernel, for every kernel that owns at least one slot."""
        return dict(Counter(self._owners))

    def kernel_ids(self) -> list[int]:
        """The kernels that own at least one slot, sorted."""
        return sorted(set(self._owners))

    def owned_mask(self, kernel_id: int) -> bytearray:
        """``NSLOTS`` bytes, 1 where ``kernel_id`` owns the slot.

        The kernel keeps this to answer "is this slot mine?" with one index on its fast
        path, instead of asking the table (a method call) per request.
        """
        return bytearray(owner == kernel_id for owner in self._owners)

    # -- wire format -------------------------------------------------------------------------

    def to_ranges(self) -> list[list[int]]:
        """``[[first, last, kernel_id], ...]``: inclusive, ascending, same-owner runs merged.

        This is ``cluster.map``'s ``slots``: a farm of N kernels is a handful of ranges
        rather than 16384 entries, and it is what Redis Cluster users already read.
        """
        ranges: list[list[int]] = []
        first = 0
        for owner, run in groupby(self._owners):
            last = first + len(list(run)) - 1
            ranges.append([first, last, owner])
            first = last + 1
        return ranges

    @classmethod
    def from_ranges(cls, epoch: int, ranges: Sequence[Sequence[int]]) -> SlotTable:
        """Build a table from the range encoding, refusing anything but an exact cover.

        Ranges come off the wire, so every slot must be covered exactly once by ranges of
        three ints; a gap or an overlap would silently leave a slot unserved or doubly owned.
        Ranges may come in any order.
        """
        if not isinstance(ranges, (list, tuple)):
            raise ValueError(f"slot ranges must be a list, not {type(ranges).__name__}")
        checked: list[tuple[int, int, int]] = []
        for index, entry in enumerate(ranges):
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise ValueError(
                    f"slot range #{index} must be [first, last, kernel_id], got {entry!r}"
                )
            first = check_int(entry[0], f"slot range #{index} first slot", 0, NSLOTS - 1)
            last = check_int(entry[1], f"slot range #{index} last slot", 0, NSLOTS - 1)
            kernel = check_int(entry[2], f"slot range #{index} kernel id", 0, MAX_KERNEL_ID)
            if first > last:
                raise ValueError(f"slot range #{index} is empty: first {first} > last {last}")
            checked.append((first, last, kernel))
        checked.sort()
        owners = array("i")
        expected = 0
        for first, last, kernel in checked:
            if first > expected:
                raise ValueError(f"slots {expected}..{first - 1} are not covered by any range")
            if first < expected:
                raise ValueError(f"slots {first}..{min(last, expected - 1)} are covered twice")
            owners.extend([kernel] * (last - first + 1))
            expected = last + 1
        if expected < NSLOTS:
            raise ValueError(f"slots {expected}..{NSLOTS - 1} are not covered by any range")
        return cls(epoch, owners)

    # -- changes -----------------------------------------------------------------------------

    def with_moves(self, moves: Iterable[Move], epoch: int) -> SlotTable:
        """A new table with ``moves`` applied; this one is left untouched.

        Each move must name the slot's current owner as its source: a plan computed against
        an older table is refused rather than applied over changes it did not see.  The new
        epoch must be larger, since peers compare epochs to tell old tables from new ones.
        """
        _check_epoch(epoch)
        if epoch <= self.epoch:
            raise ValueError(f"new epoch {epoch} must be greater than {self.epoch}")
        owners = array("i", self._owners)
        for move in moves:
            slot, target = move.slot, move.target
            if not (
                type(slot) is int
                and 0 <= slot < NSLOTS
                and type(target) is int
                and 0 <= target <= MAX_KERNEL_ID
            ):
                raise ValueError(
                    f"bad move {move!r}: the slot must be an int in [0, {NSLOTS - 1}] "
                    f"and the target a kernel id in [0, {MAX_KERNEL_ID}]"
                )
            if owners[slot] != move.source:
                raise ValueError(
                    f"slot {slot} is owned by kernel {owners[slot]}, "
                    f"not by the move's source {move.source}"
                )
            owners[slot] = target
        return SlotTable(epoch, owners)

    # -- plumbing ----------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotTable):
            return NotImplemented
        return self._epoch == other._epoch and self._owners == other._owners

    def __repr__(self) -> str:
        return f"SlotTable(epoch={self.epoch}, counts={dict(sorted(self.counts().items()))})"
