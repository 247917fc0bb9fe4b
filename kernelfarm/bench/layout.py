"""Spreading connections and in-flight slots over kernels and tenants.

A request must reach the kernel that owns its tenant, or it costs a ``MOVED`` round trip
and measures routing instead of serving.  So every connection targets one kernel and
carries only that kernel's tenants; kernels get connections in proportion to the tenants
they own (hash slots spread tenants unevenly, and a kernel with more tenants has more
work); within a kernel the slots go round-robin over its tenants, each slot a stream of
its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kernelfarm.bench.loadgen import Address, Chain, ConnectionPlan, deal
from kernelfarm.bench.workloads import PreparedWorkload


@dataclass(frozen=True)
class ConnectionLayout:
    """One connection: its kernel and the (tenant, stream) of each in-flight slot."""

    address: Address
    streams: tuple[tuple[str, int], ...]


def spread(owners: Mapping[str, Address], connections: int, depth: int) -> list[ConnectionLayout]:
    """Lay out ``connections`` x ``depth`` slots over the tenants of ``owners``."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    groups: dict[Address, list[str]] = {}
    for tenant in sorted(owners):
        groups.setdefault(owners[tenant], []).append(tenant)
    if not groups:
        raise ValueError("no tenants to lay out")
    if connections < len(groups):
        raise ValueError(f"{connections} connections cannot reach all {len(groups)} kernels")
    shares = _apportion({address: len(tenants) for address, tenants in groups.items()},
                        connections)
    layouts = []
    for address, tenants in groups.items():
        next_stream = dict.fromkeys(tenants, 0)
        slot = 0
        for _ in range(shares[address]):
            streams = []
            for _ in range(depth):
                tenant = tenants[slot % len(tenants)]
                streams.append((tenant, next_stream[tenant]))
                next_stream[tenant] += 1
                slot += 1
            layouts.append(ConnectionLayout(address, tuple(streams)))
    return layouts


def _apportion(weights: Mapping[Address, int], total: int) -> dict[Address, int]:
    """At least one each, the rest by largest remainder of the weights."""
    spare = total - len(weights)
    weight_sum = sum(weights.values())
    exact = {address: spare * weight / weight_sum for address, weight in weights.items()}
    shares = {address: 1 + int(value) for address, value in exact.items()}
    left = total - sum(shares.values())
    by_remainder = sorted(exact, key=lambda address: exact[address] - int(exact[address]),
                          reverse=True)
    for address in by_remainder[:left]:
        shares[address] += 1
    return shares


def load_cores(addresses: Sequence[Address], server_cores: Mapping[Address, int],
               processes: int, busy: int, allowed: Sequence[int]) -> list[int]:
    """The core to pin each load process to, its connections (to ``addresses``, in plan
    order) dealt as :func:`kernelfarm.bench.loadgen.deal` deals them.

    Servers take the first ``busy`` of the ``allowed`` cores (a kernel per core, a locked
    kernel's threads on as many).  Load processes go to the cores left, if any: a server
    alone on its core, its load beside it.  With none left, each process goes to the
    core of the kernel it drives (its replies wake it on that core, no cross-core
    wake-up), or, for a server without a core of its own, round the allowed cores.
    """
    if not allowed:
        raise ValueError("no cores allowed")
    spare = list(allowed[busy:])
    if spare:
        return [spare[i % len(spare)] for i in range(processes)]
    blocks = deal(addresses, min(processes, len(addresses)))
    return [server_cores.get(block[0], allowed[i % len(allowed)]) if block
            else allowed[i % len(allowed)] for i, block in enumerate(blocks)]


def streams_needed(layouts: list[ConnectionLayout]) -> dict[str, int]:
    """How many streams each tenant must be prepared with."""
    needed: dict[str, int] = {}
    for layout in layouts:
        for tenant, stream in layout.streams:
            needed[tenant] = max(needed.get(tenant, 0), stream + 1)
    return needed


def plans(layouts: list[ConnectionLayout], prepared: PreparedWorkload,
          answer: Callable[[Chain], Chain] = lambda chain: chain) -> list[ConnectionPlan]:
    """The load generator's connection plans: each slot replays its stream's chain, with
    the results ``answer`` says the server gives."""
    return [ConnectionPlan(layout.address, [answer(prepared.chain(tenant, stream))
                                            for tenant, stream in layout.streams])
            for layout in layouts]
