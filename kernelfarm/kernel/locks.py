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
its own to lock: the readiness callback that settles it runs on the loop its socket
belongs to, which is the only thread that touches that socket
(:mod:`kernelfarm.kernel.locked`), so it is passed on as it is, as in a unicpu kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import replace
from typing import Any, Awaitable, Generator, Iterator

from kernelfarm.kernel.subsystem import Method
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


class LockProvider:
    def __init__(self, locking: str) -> None:
        if locking not in ("global", "fine"):
            raise ValueError(f"locking must be 'global' or 'fine', got {locking!r}")
        self.locking = locking
        self.table_lock = threading.Lock()
        """The global lock, or in fine locking the lock of the shared table of locks."""
        self._locks: dict[str, Lock] = {}

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

        The wrapper is one frame: it finds the lock (in fine locking, the request's key
        and a dict lookup) and runs the handler under it, so what a locked kernel pays
        over a unicpu one is the lock and the least code that finds it
        (``benchmarks/handler_cost.py`` measures it).
        """
        handler, keyfn = method.handler, method.key
        offset = 1 if method.wants_conn else 0
        one_lock = self.locking == "global" or keyfn is None
        table_lock, locks, lock_for = self.table_lock, self._locks, self.lock_for

        def lock_of(args: tuple[Any, ...]) -> Lock:
            if one_lock:
                return table_lock
            try:
                key = keyfn(args[offset:] if offset else args)  # type: ignore[misc]  # one_lock when None
            except Exception:
                key = None  # bad params: the handler raises the proper error under a lock
            return table_lock if key is None else locks.get(key) or lock_for(key)

        if method.is_async:
            def locked_async(*args: Any) -> Any:
                lock = lock_of(args)
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
            # lock_of inlined: on this path every frame is part of the measured lock cost
            try:
                key = keyfn(args[offset:] if offset else args)  # type: ignore[misc]  # not None here
            except Exception:
                key = None
            with table_lock if key is None else locks.get(key) or lock_for(key):
                return handler(*args)

        return replace(method, handler=locked)

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

