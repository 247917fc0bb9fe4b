"""Hypothesis strategies shared by the partition tests."""

from __future__ import annotations

from hypothesis import strategies as st

from kernelfarm.partition import NSLOTS, SlotTable


@st.composite
def slot_tables(draw: st.DrawFn, max_kernel: int = 15) -> SlotTable:
    """Arbitrary (unbalanced, fragmented) tables: random cut points, random owner per piece."""
    cuts = sorted(draw(st.sets(st.integers(1, NSLOTS - 1), max_size=12)))
    bounds = [0, *cuts, NSLOTS]
    owners: list[int] = []
    for first, end in zip(bounds, bounds[1:], strict=False):
        owners.extend([draw(st.integers(0, max_kernel))] * (end - first))
    return SlotTable(draw(st.integers(0, 1000)), owners)
