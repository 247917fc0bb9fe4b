"""What both clients share: the slot table, where a request goes, and when to retry.

Kept free of I/O so the blocking and the asyncio client cannot route differently, and so
the rules are testable alone.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass
from typing import Any

from kernelfarm.errors import ConnectionLost, Moved, TryAgain
from kernelfarm.hostport import Addr
from kernelfarm.keys import KEY_OF
from kernelfarm.partition import SlotTable, key_slot


def partition_key(method: str, params: list[Any]) -> str | None:
    """The key a request routes by, or ``None`` when any kernel may answer it.

    A key that cannot be computed (bad params) is ``None`` too: the request goes to some
    kernel, which answers with the proper error, so validation lives in one place.
    """
    keyfn = KEY_OF.get(method.partition(".")[0])
    if keyfn is None or not params:
        return None
    try:
        return keyfn(params)
    except Exception:
        return None


class Router:
    """The client's copy of ``cluster.map``."""

    def __init__(self, cluster_map: dict[str, Any]) -> None:
        self.update(cluster_map)

    def update(self, cluster_map: dict[str, Any]) -> None:
        self.epoch: int = cluster_map["epoch"]
        self.table = SlotTable.from_ranges(self.epoch, cluster_map["slots"])
        self.addrs: dict[int, Addr] = {
            k["id"]: (k["addr"][0], int(k["addr"][1])) for k in cluster_map["kernels"]
            if k.get("state") != "failed"}
        self.all_addrs: dict[int, Addr] = {
            k["id"]: (k["addr"][0], int(k["addr"][1])) for k in cluster_map["kernels"]}

    def route(self, method: str, params: list[Any]) -> Addr:
        """The owner's address; a kernel marked failed refuses at once (it stays down)."""
        key = partition_key(method, params)
        if key is None:
            return self.any()
        owner = self.table.owner(key_slot(key))
        addr = self.addrs.get(owner)
        if addr is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED,
                                         f"kernel {owner}, which owns {key!r}, has failed")
        return addr

    def any(self) -> Addr:
        return random.choice(list(self.addrs.values() or self.all_addrs.values()))

    def kernels(self) -> list[Addr]:
        return list(self.addrs.values())


@dataclass(frozen=True)
class Reaction:
    """What a client does about a failed call before trying it again."""

    backoff: bool = False
    refresh: bool = False
    only_if_removed: bool = False
    """Resend only if the kernel is gone from the refreshed map (removed by scaling: it
    owned no slot when it stopped, so it applied nothing it had not answered)."""


RETRYABLE = (Moved, TryAgain, ConnectionRefusedError, ConnectionLost)


def reaction_to(exc: BaseException, *, reached: bool) -> Reaction | None:
    """How to retry after ``exc``, or ``None`` to raise it.

    ``reached`` says a connection to the kernel was made: an ECONNREFUSED after that is
    the call's own result (``net.connect`` to a closed port), not a kernel restarting.
    """
    if isinstance(exc, Moved):
        return Reaction(refresh=True)
    if isinstance(exc, TryAgain):
        return Reaction(backoff=True)
    if isinstance(exc, ConnectionRefusedError):
        return None if reached else Reaction(backoff=True, refresh=True)
    if isinstance(exc, ConnectionLost):
        return Reaction(refresh=True, only_if_removed=True)
    return None


@dataclass
class RetryPolicy:
    """Back-off for TRYAGAIN and for a kernel that is restarting, within a deadline."""

    deadline_s: float = 10.0
    first_delay_s: float = 0.005
    max_delay_s: float = 0.25

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** attempt)
