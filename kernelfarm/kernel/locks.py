"""The lock provider: the one place that decides how subsystem code is locked.

A unicpu kernel never calls into this module: its handlers are registered as they are, so
its fast path runs no lock code at all (rump's RUMP_NCPU=1 with RUMP_LOCKS_UP) — not even a
no-op ``with``, which costs about as much as a real lock in CPython.  The locked baseline
(one kernel process, N threads sharing all state) gets real locks by wrapping each handler
when it is registered, so the same subsystem code runs in both.

- ``global``: one big lock around every handler (the old "giant lock" kernel).
- ``fine``: one lock per partition key (volume / namespace), created on demand under a lock
  for the shared table of locks; requests without a key take that table lock.

A waiting handler (a coroutine) holds its lock only while it runs, never across a wait:
each step between two suspensions runs under the lock, as kernel code sleeping on a
condition releases its mutex.  A handler that answers with a plain future or an
:class:`~kernelfarm.rpc.answer.Answer` (a ``net.recv`` that waits) has no later step of
its own to lock: the readiness callback that settles it takes the namespace's lock itself
(``FarmSocket.guard``, :mod:`kernelfarm.kernel.locked`), so it is passed on as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from dataclasses import replace
from typing import Any, Awaitable, Generator, Iterator

from kernelfarm.kernel.subsystem import KeyOf, Method
from kernelfarm.rpc.answer import Answer

Lock = Any  # threading.Lock() returns an instance of a private type


class LockedSteps:
    """Run a coroutine so that each step between suspensions holds ``lock``."""

    __slots__ = ("_coro", "_lock")

    def __init__(self, coro: Awaitable[Any], lock: Lock) -> None:
        self._coro = coro.__await__()
        self._lock = lock

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, lock = self._coro, self._lock
        value: Any = None
        error: BaseException | None = None
        while True:
            with lock:
                try:
                    yielded = coro.send(value) if error is None else coro.throw(error)
                except StopIteration as stop:
                    return stop.value
            value, error = None, None
            try:
                value = yield yielded
            except BaseException as exc:  # delivered into the coroutine at its next step
                error = exc


LOCKS_REMEMBERED = 16384
"""First parameters (paths, namespaces) whose lock a fine wrapper keeps, per key function."""
REMEMBERED_CHARS = 128
"""Longer first parameters are not kept: the remembered locks stay bounded in bytes."""


class LockProvider:
    def __init__(self, locking: str) -> None:
        if locking not in ("global", "fine"):
            raise ValueError(f"locking must be 'global' or 'fine', got {locking!r}")
        self.locking = locking
        self.table_lock = threading.Lock()
        """The global lock, or in fine locking the lock of the shared table of locks."""
        self._locks: dict[str, Lock] = {}
        self._by_first: dict[KeyOf, dict[str, Lock]] = {}
        """Per key function, the lock of a request by its first parameter (see wrap)."""

    def lock_for(self, key: str | None) -> Lock:
        if self.locking == "global" or key is None:
            return self.table_lock
        lock = self._locks.get(key)
        if lock is None:
            with self.table_lock:
                lock = self._locks.setdefault(key, threading.Lock())
        return lock

    def wrap(self, method: Method) -> Method:
        """The same method, its handler running under the lock its request needs.

        The wrapper is one frame: it finds the lock and runs the handler under it, so
        what a locked kernel pays over a unicpu one is the lock and the least code that
        finds it (``benchmarks/handler_cost.py`` measures it).  In fine locking the lock
        is remembered by the request's first parameter, as a unicpu kernel remembers a
        request's route by it (a key function reads only that parameter, and a key's
        lock never changes): a known path or namespace costs one dict lookup, not the
        key function, so the baseline pays no more to find its lock than the partitioned
        kernel pays to find its slot.
        """
        handler, keyfn = method.handler, method.key
        offset = 1 if method.wants_conn else 0
        one_lock = self.locking == "global" or keyfn is None
        table_lock = self.table_lock
        by_first = self._by_first.setdefault(keyfn, {}) if keyfn is not None else {}
        find = functools.partial(self._find, keyfn, offset, by_first)

        if method.is_async:
            def locked_async(*args: Any) -> Any:
                lock: Lock = table_lock
                if not one_lock:
                    first = args[offset] if len(args) > offset else None
                    lock = (by_first.get(first) if type(first) is str else None) or find(args)
                with lock:
                    result = handler(*args)
                if not hasattr(result, "__await__") or isinstance(result, (asyncio.Future,
                                                                           Answer)):
                    return result  # answered at once, or settled by its loop: no steps
                return LockedSteps(result, lock)

            return replace(method, handler=locked_async)

        if one_lock:
            def locked_globally(*args: Any) -> Any:
                with table_lock:
                    return handler(*args)

            return replace(method, handler=locked_globally)

        def locked(*args: Any) -> Any:
            # inlined: on this path every frame is part of the measured lock cost
            first = args[offset] if len(args) > offset else None
            lock = by_first.get(first) if type(first) is str else None
            with lock or find(args):
                return handler(*args)

        return replace(method, handler=locked)

    def _find(self, keyfn: KeyOf | None, offset: int, by_first: dict[str, Lock],
              args: tuple[Any, ...]) -> Lock:
        """The lock of a request whose first parameter is not remembered yet: its key's
        (the table lock when it has none, or bad params: the handler then raises the
        proper error under it), remembered by that parameter when it is a short str."""
        try:
            key = keyfn(args[offset:] if offset else args)  # type: ignore[misc]  # not None here
        except Exception:
            return self.table_lock
        lock = self.table_lock if key is None else self.lock_for(key)
        first = args[offset] if len(args) > offset else None
        if type(first) is str and len(first) <= REMEMBERED_CHARS:
            if len(by_first) >= LOCKS_REMEMBERED:
                by_first.clear()
            by_first[first] = lock
        return lock

    @contextlib.contextmanager
    def everything(self) -> Iterator[None]:
        """Hold every lock: a group commit must see no handler half-way through a change.

        The table lock first (no new lock can appear), then the key locks in a fixed
        order; a handler holds one lock at a time, so this cannot deadlock.
        """
        with self.table_lock:
            held = [self._locks[key] for key in sorted(self._locks)]
            for lock in held:
                lock.acquire()
            try:
                yield
            finally:
                for lock in reversed(held):
                    lock.release()

