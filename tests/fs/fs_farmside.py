"""Helpers for fs tests against real farms: where a volume lives, fresh volume names."""

from __future__ import annotations

import itertools
from typing import Any

from kernelfarm.partition import key_slot

_fresh = itertools.count()


def owner_of(cluster_map: dict[str, Any], volume: str) -> dict[str, Any]:
    """The kernel (a ``cluster.map`` row) whose slots hold ``volume``."""
    slot = key_slot(volume)
    owner = next(kid for first, last, kid in cluster_map["slots"] if first <= slot <= last)
    return next(kernel for kernel in cluster_map["kernels"] if kernel["id"] == owner)


def volume_on(cluster_map: dict[str, Any], kernel_id: int, prefix: str) -> str:
    """A volume name never used before in this test run, starting with ``prefix``, that
    kernel ``kernel_id`` owns."""
    for _ in range(10_000):
        name = f"{prefix}{next(_fresh)}"
        if owner_of(cluster_map, name)["id"] == kernel_id:
            return name
    raise AssertionError(f"no volume {prefix}* lands on kernel {kernel_id}")
