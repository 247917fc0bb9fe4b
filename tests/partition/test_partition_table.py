"""SlotTable: lookups, the range wire format, validation of untrusted ranges, moves."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from partition_strategies import slot_tables

from kernelfarm.partition import NSLOTS, Move, SlotTable


def two_kernels() -> SlotTable:
    return SlotTable(5, [0] * 100 + [1] * (NSLOTS - 200) + [0] * 100)


def test_lookups() -> None:
    table = two_kernels()
    assert table.epoch == 5
    assert table.owner(0) == 0
    assert table.owner(100) == 1
    assert table.owner(NSLOTS - 1) == 0
    assert table.slots_of(0) == [*range(100), *range(NSLOTS - 100, NSLOTS)]
    assert table.slots_of(7) == []
    assert table.counts() == {0: 200, 1: NSLOTS - 200}
    assert table.kernel_ids() == [0, 1]


@pytest.mark.parametrize("slot", [-1, NSLOTS])
def test_owner_rejects_slots_outside_the_table(slot: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        two_kernels().owner(slot)


def test_owned_mask_marks_exactly_the_owned_slots() -> None:
    table = two_kernels()
    mask = table.owned_mask(0)
    assert isinstance(mask, bytearray)
    assert len(mask) == NSLOTS
    assert [slot for slot in range(NSLOTS) if mask[slot]] == table.slots_of(0)
    assert set(mask) == {0, 1}
    assert not any(table.owned_mask(9))


def test_to_ranges_merges_runs() -> None:
    assert two_kernels().to_ranges() == [
        [0, 99, 0],
        [100, NSLOTS - 101, 1],
        [NSLOTS - 100, NSLOTS - 1, 0],
    ]
    assert SlotTable(1, [3] * NSLOTS).to_ranges() == [[0, NSLOTS - 1, 3]]


@settings(max_examples=100, deadline=None)
@given(slot_tables())
def test_range_encoding_round_trips(table: SlotTable) -> None:
    ranges = table.to_ranges()
    assert SlotTable.from_ranges(table.epoch, ranges) == table
    # Sorted, contiguous, inclusive, and no two neighbours with the same owner.
    assert ranges[0][0] == 0 and ranges[-1][1] == NSLOTS - 1
    for (_, last, owner), (first, _, next_owner) in zip(ranges, ranges[1:], strict=False):
        assert first == last + 1
        assert owner != next_owner
    for first, last, owner in ranges:
        assert all(table.owner(slot) == owner for slot in (first, last, (first + last) // 2))


def test_from_ranges_accepts_any_order_and_tuples() -> None:
    table = SlotTable.from_ranges(2, [(8192, NSLOTS - 1, 1), (0, 8191, 0)])
    assert table.to_ranges() == [[0, 8191, 0], [8192, NSLOTS - 1, 1]]


BAD_RANGES: list[tuple[Any, str]] = [
    ([[0, 100, 0], [102, NSLOTS - 1, 1]], r"slots 101\.\.101 are not covered"),
    ([[1, NSLOTS - 1, 0]], r"slots 0\.\.0 are not covered"),
    ([[0, 100, 0]], rf"slots 101\.\.{NSLOTS - 1} are not covered"),
    ([], rf"slots 0\.\.{NSLOTS - 1} are not covered"),
    ([[0, 100, 0], [90, NSLOTS - 1, 1]], r"slots 90\.\.100 are covered twice"),
    ([[0, NSLOTS - 1, 0], [5, 5, 1]], r"slots 5\.\.5 are covered twice"),
    ([[0, NSLOTS, 0]], "out of range"),
    ([[-1, NSLOTS - 1, 0]], "out of range"),
    ([[0, NSLOTS - 1, -3]], "out of range"),
    ([[0, NSLOTS - 1, 2**31]], "out of range"),
    ([[10, 5, 0], [0, NSLOTS - 1, 0]], "empty"),
    ([[0, "16383", 0]], "must be an int, not str"),
    ([[0.0, NSLOTS - 1, 0]], "must be an int, not float"),
    ([[0, NSLOTS - 1, True]], "must be an int, not bool"),
    ([[0, NSLOTS - 1, None]], "must be an int, not NoneType"),
    ([[0, NSLOTS - 1]], r"must be \[first, last, kernel_id\]"),
    ([[0, NSLOTS - 1, 0, 0]], r"must be \[first, last, kernel_id\]"),
    (["abc"], r"must be \[first, last, kernel_id\]"),
    ([7], r"must be \[first, last, kernel_id\]"),
    ({"0": [0, NSLOTS - 1, 0]}, "must be a list, not dict"),
    ("0-16383", "must be a list, not str"),
    (None, "must be a list, not NoneType"),
]


@pytest.mark.parametrize(("ranges", "message"), BAD_RANGES)
def test_from_ranges_rejects_anything_but_an_exact_cover(ranges: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlotTable.from_ranges(1, ranges)


@pytest.mark.parametrize("epoch", [-1, 1.5, "1", None, True])
def test_epoch_must_be_a_non_negative_int(epoch: Any) -> None:
    with pytest.raises(ValueError, match="epoch"):
        SlotTable.from_ranges(epoch, [[0, NSLOTS - 1, 0]])


@pytest.mark.parametrize(
    ("owners", "message"),
    [
        ([0] * (NSLOTS - 1), f"needs {NSLOTS} owners, got {NSLOTS - 1}"),
        ([0] * (NSLOTS + 1), f"needs {NSLOTS} owners, got {NSLOTS + 1}"),
        ([0] * (NSLOTS - 1) + [-2], "kernel id -2 is negative"),
        ([0] * (NSLOTS - 1) + [2**40], "kernel ids"),
        ([0] * (NSLOTS - 1) + ["x"], "kernel ids"),
    ],
)
def test_constructor_validates_owners(owners: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlotTable(1, owners)


def test_with_moves_builds_a_new_table_and_leaves_the_old_one() -> None:
    table = two_kernels()
    moved = table.with_moves([Move(0, 0, 1), Move(200, 1, 2)], epoch=6)
    assert moved.epoch == 6
    assert (moved.owner(0), moved.owner(200), moved.owner(1)) == (1, 2, 0)
    assert moved.counts() == {0: 199, 1: NSLOTS - 200, 2: 1}
    assert table == two_kernels()


def test_with_moves_refuses_a_stale_source() -> None:
    with pytest.raises(ValueError, match="slot 0 is owned by kernel 0, not by the move's source 1"):
        two_kernels().with_moves([Move(0, 1, 2)], epoch=6)


@pytest.mark.parametrize("epoch", [4, 5])
def test_with_moves_requires_a_larger_epoch(epoch: int) -> None:
    with pytest.raises(ValueError, match="must be greater than 5"):
        two_kernels().with_moves([], epoch=epoch)


@pytest.mark.parametrize(
    "move", [Move(NSLOTS, 0, 1), Move(-1, 0, 1), Move(0, 0, -1), Move(0, 0, True)]
)
def test_with_moves_rejects_bad_moves(move: Move) -> None:
    with pytest.raises(ValueError):
        two_kernels().with_moves([move], epoch=6)


def test_tables_compare_by_epoch_and_owners() -> None:
    assert two_kernels() == two_kernels()
    assert two_kernels() != SlotTable(6, [0] * 100 + [1] * (NSLOTS - 200) + [0] * 100)
    assert two_kernels() != SlotTable(5, [0] * NSLOTS)
    assert "epoch=5" in repr(two_kernels())


def test_epoch_cannot_be_changed_in_place() -> None:
    # Peers trust that a table at an epoch never changes; a change is a new table.
    table = two_kernels()
    with pytest.raises(AttributeError):
        table.epoch = 6  # type: ignore[misc]
    assert table.epoch == 5
