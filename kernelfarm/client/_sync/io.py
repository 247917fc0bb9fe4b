"""The blocking twin of ``_async/io.py``: the calls ran one after the other already, so
``gather`` only collects their results and an open is never shared.  Written by hand."""

from __future__ import annotations

from time import sleep
from typing import Callable, Generic, TypeVar

from kernelfarm.rpc.blocking import BlockingConnection, connect

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

__all__ = ["BlockingConnection", "OpenOnce", "connect", "gather", "sleep"]


def gather(*results: T) -> list[T]:
    return list(results)


class OpenOnce(Generic[K, V]):
    """One call at a time: nothing to share."""

    def __call__(self, key: K, opener: Callable[[K], V]) -> V:
        return opener(key)
