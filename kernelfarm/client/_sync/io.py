"""The blocking twin of ``_async/io.py``: the calls ran one after the other already, so
``gather`` only collects their results.  Written by hand."""

from __future__ import annotations

from time import sleep
from typing import TypeVar

from kernelfarm.rpc.blocking import BlockingConnection, connect

T = TypeVar("T")

__all__ = ["BlockingConnection", "connect", "gather", "sleep"]


def gather(*results: T) -> list[T]:
    return list(results)
