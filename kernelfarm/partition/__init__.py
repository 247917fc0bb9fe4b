"""Partition: key -> slot -> kernel.

``key_slot`` maps a partition key (fs volume, net namespace) to one of ``NSLOTS`` slots;
a ``SlotTable`` maps each slot to its owner kernel at an epoch; ``rebalance_plan`` says which
slots move, as few as possible, when the set of kernels changes.  Pure computation, no I/O,
shared by the supervisor, the kernels and the clients so they cannot disagree.
"""

from __future__ import annotations

from kernelfarm.partition.rebalance import Move, apply_plan, initial_assignment, rebalance_plan
from kernelfarm.partition.slots import NSLOTS, key_slot
from kernelfarm.partition.table import SlotTable

__all__ = [
    "NSLOTS",
    "Move",
    "SlotTable",
    "apply_plan",
    "initial_assignment",
    "key_slot",
    "rebalance_plan",
]
