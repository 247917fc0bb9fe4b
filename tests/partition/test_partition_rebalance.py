"""Rebalancing: every slot owned once, balanced within one slot, and the fewest moves.

The minimum is computed here by brute force, independently of the planner: in any balanced
final table each kernel keeps at most ``min(current, target)`` of its slots, so the moves are
at least ``NSLOTS - max over target choices of sum(min(current, target))``, where a target
choice is which ``NSLOTS % n`` kernels get the "+1".  Trying every choice gives the exact
minimum, so a planner that picks the wrong "+1" kernels or shuffles slots it need not touch
fails these tests.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from partition_strategies import slot_tables

from kernelfarm.partition import (
    NSLOTS,
    Move,
    SlotTable,
    initial_assignment,
    rebalance_plan,
)
from kernelfarm.partition.rebalance import apply_plan

kernel_sets = st.lists(st.integers(0, 15), min_size=1, max_size=8, unique=True)


def brute_force_minimum(counts: dict[int, int], kernel_ids: list[int]) -> int:
    base, extra = divmod(NSLOTS, len(kernel_ids))
    most_kept = max(
        sum(min(counts.get(kernel, 0), base + (kernel in plus_one)) for kernel in kernel_ids)
        for plus_one in map(set, combinations(kernel_ids, extra))
    )
    return NSLOTS - most_kept


def runs(slots: list[int]) -> int:
    """How many maximal runs of consecutive numbers ``slots`` (ascending) forms."""
    return sum(1 for a, b in zip([None, *slots], slots, strict=False) if a is None or b != a + 1)


def check_plan(table: SlotTable, kernel_ids: list[int], moves: list[Move]) -> SlotTable:
    """Assert everything a plan promises and return the table it leads to."""
    after = apply_plan(table, moves)  # also refuses moves whose source is not the owner
    assert after.epoch == table.epoch + 1
    assert len({move.slot for move in moves}) == len(moves), "a slot moved twice"
    assert all(move.source != move.target for move in moves)
    assert all(move.target in kernel_ids for move in moves)

    # Every slot is owned, once, by a kernel of the new set (removed kernels keep nothing).
    after_counts = after.counts()
    assert set(after_counts) <= set(kernel_ids)
    assert sum(after_counts.values()) == NSLOTS
    # Balanced within one slot.
    sizes = [after_counts.get(kernel, 0) for kernel in kernel_ids]
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) == NSLOTS // len(kernel_ids)

    sources = {move.source for move in moves}
    targets = {move.target for move in moves}
    assert not sources & targets, "a kernel both gave and received slots"
    assert len(moves) == brute_force_minimum(table.counts(), kernel_ids)
    return after


# -- initial assignment ----------------------------------------------------------------------


@pytest.mark.parametrize("kernel_ids", [[0], [1, 0], [5, 2, 9], list(range(7)), list(range(64))])
def test_initial_assignment_is_contiguous_and_balanced(kernel_ids: list[int]) -> None:
    table = initial_assignment(kernel_ids)
    assert table.epoch == 1
    ranges = table.to_ranges()
    assert [owner for _, _, owner in ranges] == sorted(kernel_ids)
    sizes = [last - first + 1 for first, last, _ in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == NSLOTS


def test_initial_assignment_takes_the_epoch() -> None:
    assert initial_assignment([0, 1], epoch=42).epoch == 42


def test_more_kernels_than_slots_leaves_some_kernels_empty_but_balanced() -> None:
    table = initial_assignment(range(NSLOTS + 3))
    assert table.counts() == {kernel: 1 for kernel in range(NSLOTS)}


@pytest.mark.parametrize(
    ("kernel_ids", "message"),
    [
        ([], "at least one kernel"),
        ([1, 2, 1], "repeat"),
        ([0, -1], "out of range"),
        ([0, True], "not bool"),
        ([0, "1"], "not str"),
        ("01", "must be a list of ints, not str"),
        (3, "must be a list of ints, not int"),
    ],
)
def test_bad_kernel_ids_are_rejected(kernel_ids: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        initial_assignment(kernel_ids)
    with pytest.raises(ValueError, match=message):
        rebalance_plan(initial_assignment([0]), kernel_ids)


# -- the "+1" slots go to the kernels that already hold more ----------------------------------


def test_balanced_table_with_the_remainder_on_a_high_id_moves_nothing() -> None:
    # 16384 = 3 * 5461 + 1: kernel 2 already holds the one extra slot.  Handing the "+1" to
    # the lowest id instead would move a slot for nothing.
    table = SlotTable.from_ranges(1, [[0, 5460, 0], [5461, 10921, 1], [10922, NSLOTS - 1, 2]])
    assert table.counts() == {0: 5461, 1: 5461, 2: 5462}
    assert rebalance_plan(table, [0, 1, 2]) == []


def test_shrinking_moves_only_the_removed_kernels_slots() -> None:
    # 5 -> 3 kernels: the survivors hold 3277, 3277 and 3276 slots, all below their new
    # targets, so they must only receive, and the removed kernels' slots are all that moves.
    table = initial_assignment(range(5))
    moves = rebalance_plan(table, [2, 3, 4])
    check_plan(table, [2, 3, 4], moves)
    assert {move.source for move in moves} == {0, 1}
    assert len(moves) == table.counts()[0] + table.counts()[1]


def test_growing_takes_only_the_excess_from_each_survivor() -> None:
    table = SlotTable.from_ranges(3, [[0, 9999, 0], [10000, NSLOTS - 1, 1]])
    moves = rebalance_plan(table, [0, 1, 2])
    check_plan(table, [0, 1, 2], moves)
    # Targets 5462 (to kernel 0, the largest), 5461, 5461: kernel 1 (6384) gives 923.
    assert sum(1 for move in moves if move.source == 0) == 10000 - 5462
    assert sum(1 for move in moves if move.source == 1) == 6384 - 5461
    assert {move.target for move in moves} == {2}


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(slot_tables(), kernel_sets)
def test_any_table_to_any_kernel_set(table: SlotTable, kernel_ids: list[int]) -> None:
    check_plan(table, kernel_ids, rebalance_plan(table, kernel_ids))


@settings(max_examples=60, deadline=None)
@given(kernel_sets, kernel_sets)
def test_n_to_m_kernels(before: list[int], after: list[int]) -> None:
    table = initial_assignment(before)
    check_plan(table, after, rebalance_plan(table, after))


@settings(max_examples=30, deadline=None)
@given(st.lists(kernel_sets, min_size=2, max_size=5))
def test_chains_of_rebalances(steps: list[list[int]]) -> None:
    table = initial_assignment(steps[0])
    for kernel_ids in steps[1:]:
        table = check_plan(table, kernel_ids, rebalance_plan(table, kernel_ids))
        # Once balanced over a set, asking for the same set (in any order) moves nothing.
        assert rebalance_plan(table, kernel_ids[::-1]) == []


@settings(max_examples=40, deadline=None)
@given(slot_tables(), st.data())
def test_rebalanced_table_is_a_fixed_point(table: SlotTable, data: st.DataObject) -> None:
    kernel_ids = data.draw(kernel_sets)
    balanced = apply_plan(table, rebalance_plan(table, kernel_ids))
    assert rebalance_plan(balanced, kernel_ids) == []
    shuffled = data.draw(st.permutations(kernel_ids))
    assert rebalance_plan(balanced, shuffled) == []


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 80), st.integers(1, 80))
def test_many_kernels_move_the_minimum(n: int, m: int) -> None:
    # Too many kernels for brute force; the closed form follows from the same bound: each
    # kernel keeps min(current, base) slots, plus one more for up to ``extra`` kernels that
    # hold more than ``base``.
    table = initial_assignment(range(n))
    moves = rebalance_plan(table, list(range(m)))
    base, extra = divmod(NSLOTS, m)
    counts = table.counts()
    kept = sum(min(counts.get(kernel, 0), base) for kernel in range(m))
    kept += min(extra, sum(1 for kernel in range(m) if counts.get(kernel, 0) > base))
    assert len(moves) == NSLOTS - kept
    sizes = apply_plan(table, moves).counts()
    assert set(sizes) == set(range(m))
    assert max(sizes.values()) - min(sizes.values()) <= 1


# -- moves stay contiguous, so cluster.map stays short ---------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_growing_by_one_keeps_ranges_compact(n: int) -> None:
    table = initial_assignment(range(n))
    after = check_plan(table, list(range(n + 1)), rebalance_plan(table, list(range(n + 1))))
    for kernel in range(n):  # donors gave a tail: what they keep is still one range
        assert runs(after.slots_of(kernel)) == 1
    assert runs(after.slots_of(n)) <= n  # at most one run from each donor


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16])
def test_removing_one_hands_out_one_run_per_receiver(n: int) -> None:
    table = initial_assignment(range(n))
    moves = rebalance_plan(table, list(range(1, n)))
    check_plan(table, list(range(1, n)), moves)
    for kernel in range(1, n):
        assert runs(sorted(move.slot for move in moves if move.target == kernel)) == 1
