"""Which slots move when kernels are added or removed.

Every moved slot pauses its writes (``TRYAGAIN``) while its state travels to the new owner,
so live scaling should move as few slots as it can and still leave the farm balanced: each
kernel ends with ``NSLOTS // n`` or one more slot.  The plan is the minimum:

* a removed kernel gives away every slot it holds;
* a surviving kernel above its target gives away exactly its excess and nothing else;
* the ``NSLOTS % n`` "+1" targets go to the kernels that hold the most slots already: a
  +1 on a kernel holding more than ``NSLOTS // n`` lets it keep one more slot at home,
  while a +1 on any other kernel only makes it receive one more slot from elsewhere.

Each kernel can keep at most ``min(current, target)`` of its slots, so at least
``NSLOTS - sum(min(current, target))`` slots move; the plan moves exactly that many, and the
choice of +1 targets above makes the sum as large as it can be.  Donors give from the end of
their ranges and receivers take donated slots in order, so the range encoding of
``cluster.map`` stays short.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from kernelfarm.partition.slots import NSLOTS
from kernelfarm.partition.table import MAX_KERNEL_ID, SlotTable, check_int


@dataclass(frozen=True, slots=True)
class Move:
    """Slot ``slot`` passes from kernel ``source`` to kernel ``target``."""

    slot: int
    source: int
    target: int


def _checked_kernel_ids(kernel_ids: Iterable[int]) -> list[int]:
    """The kernel ids of the farm-to-be: at least one, ints, no repeats."""
    if isinstance(kernel_ids, (str, bytes)) or not isinstance(kernel_ids, Iterable):
        raise ValueError(f"kernel ids must be a list of ints, not {type(kernel_ids).__name__}")
    kernel_ids = list(kernel_ids)
    if not kernel_ids:
        raise ValueError("a farm needs at least one kernel")
    for kernel in kernel_ids:
        check_int(kernel, "kernel id", 0, MAX_KERNEL_ID)
    if len(set(kernel_ids)) != len(kernel_ids):
        raise ValueError(f"kernel ids repeat: {sorted(kernel_ids)}")
    return kernel_ids


def initial_assignment(kernel_ids: Iterable[int], epoch: int = 1) -> SlotTable:
    """One contiguous range per kernel, in kernel id order, sizes differing by at most one.

    One range per kernel is the shortest possible ``cluster.map`` and the easiest to read in
    ``kernelfarm status``.
    """
    kernels = sorted(_checked_kernel_ids(kernel_ids))
    base, extra = divmod(NSLOTS, len(kernels))
    owners: list[int] = []
    for rank, kernel in enumerate(kernels):
        owners.extend([kernel] * (base + (rank < extra)))
    return SlotTable(epoch, owners)


def balanced_targets(counts: dict[int, int], kernel_ids: Iterable[int]) -> dict[int, int]:
    """How many slots each kernel of ``kernel_ids`` should end with.

    The ``NSLOTS % n`` kernels with a +1 target are those holding the most slots now (ties
    broken by kernel id, so the plan is deterministic); see the module docstring for why
    that makes the number of moves minimal.
    """
    kernels = _checked_kernel_ids(kernel_ids)
    base, extra = divmod(NSLOTS, len(kernels))
    ranked = sorted(kernels, key=lambda kernel: (-counts.get(kernel, 0), kernel))
    return {kernel: base + (rank < extra) for rank, kernel in enumerate(ranked)}


def rebalance_plan(table: SlotTable, kernel_ids: Iterable[int]) -> list[Move]:
    """The fewest moves that leave exactly ``kernel_ids`` owning every slot, balanced.

    Kernels in ``kernel_ids`` that own nothing yet are new; owners missing from it are
    being removed.  Moves come grouped by target kernel, slots ascending.  A table that is
    already balanced over the same kernels yields no moves.
    """
    counts = table.counts()
    targets = balanced_targets(counts, kernel_ids)

    # Donors give from the end of their ranges: the tail of the last range first.
    excess = {
        kernel: count - targets.get(kernel, 0)
        for kernel, count in counts.items()
        if count > targets.get(kernel, 0)
    }
    given: list[tuple[int, int, int]] = []  # runs of donated slots: (first, last, source)
    for first, last, kernel in reversed(table.to_ranges()):
        wanted = excess.get(kernel, 0)
        if wanted:
            taken = min(wanted, last - first + 1)
            given.append((last - taken + 1, last, kernel))
            excess[kernel] = wanted - taken
    given.reverse()  # ascending slots

    # Receivers take the donated runs in slot order, so each gets as few runs as it can.
    pending = deque(given)
    moves: list[Move] = []
    for kernel in sorted(targets):
        deficit = targets[kernel] - counts.get(kernel, 0)
        while deficit > 0:
            first, last, source = pending.popleft()
            taken = min(deficit, last - first + 1)
            moves.extend(Move(slot, source, kernel) for slot in range(first, first + taken))
            if first + taken <= last:
                pending.appendleft((first + taken, last, source))
            deficit -= taken
    return moves


def apply_plan(table: SlotTable, moves: Iterable[Move]) -> SlotTable:
    """``table`` after ``moves``, at the next epoch."""
    return table.with_moves(moves, table.epoch + 1)
