"""``async with farm.net.socket(...) as sock`` without an ``await`` in front.

A coroutine is not an async context manager, so ``async with`` on the coroutine of an
``async def socket()`` fails and callers had to write ``async with await ...``.
:func:`opening` wraps such a method so its call is both: awaited, it gives the object;
entered, it opens it, enters it, and exits it (closing it) at the end of the block.
"""

from __future__ import annotations

import functools
from collections.abc import Coroutine, Generator
from typing import Any, Callable, Generic, ParamSpec, Protocol, TypeVar


class AsyncResource(Protocol):
    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


R = TypeVar("R", bound=AsyncResource)
P = ParamSpec("P")


class Opening(Generic[R]):
    """The pending result of an opening call: ``await`` it or ``async with`` it."""

    __slots__ = ("_coro", "_resource")

    def __init__(self, coro: Coroutine[Any, Any, R]) -> None:
        self._coro = coro
        self._resource: R | None = None

    def __await__(self) -> Generator[Any, None, R]:
        return self._coro.__await__()

    async def __aenter__(self) -> R:
        self._resource = await self._coro
        await self._resource.__aenter__()
        return self._resource

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._resource is not None
        await self._resource.__aexit__(*exc_info)


def opening(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Opening[R]]:
    """Make ``method(...)`` usable both as ``await method(...)`` and ``async with``."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> Opening[R]:
        return Opening(method(*args, **kwargs))

    return call
