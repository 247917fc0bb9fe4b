"""The locked baseline: ONE kernel process serving every slot with N threads.

This is the design the seed argues against, built as fairly as we can: every thread runs
the whole stack (its own uvloop loop accepting on the shared listening socket, decoding,
dispatching) like a CPU of a multiprocessor kernel, and all threads share one set of
subsystems whose handlers the lock provider wrapped in real locks.  It is RUMP_NCPU=N
next to the partitioned farm's RUMP_NCPU=1: the same subsystem code, with locks.

What sharing costs beyond the locks themselves, and how it is paid here:
- group commit: a thread that handled a write holds its replies until a commit has run
  the subsystems' flushes with every lock held (no handler is half-way through a journal
  append), so nothing is acknowledged before it is written;
- state tied to an event loop (the net subsystem's sockets) lives on the loop of the thread
  that created it; calls for it from other threads hop to that loop and back, as a
  cross-CPU wake-up does, and so do fd hand-offs (``run_keyed``: SOCKS relays).  A
  ``net.send`` or ``net.recv`` runs on the thread that got it, under its namespace's lock,
  as a send or receive runs on the calling CPU of a multiprocessor kernel (the socket's
  readiness callbacks, which read ahead into it, take that lock too: ``use_locks``): only
  a wait -- a send the host's buffer cannot take, a recv with nothing to read -- hops to
  the socket's loop, whose watch of the socket is that loop's alone;
- counters (``kernel.stats`` ops) are updated without a lock and may undercount.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, TypeVar

import uvloop

from kernelfarm.boot import BootInfo
from kernelfarm.config import Config
from kernelfarm.errors import TryAgain
from kernelfarm.kernel.commit import Flush, GroupCommit, flush_or_exit
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.kernel.locks import LockedSteps, LockProvider
from kernelfarm.kernel.subsystem import Method
from kernelfarm.net.sockets import WAIT_AT_HOME
from kernelfarm.rpc.answer import Answer
from kernelfarm.rpc.protocol import Wire


T = TypeVar("T")

UNLOCKED = frozenset({"kernel.ping"})
"""Methods that touch no subsystem state and take no lock: the supervisor's heartbeat must
not wait for a handler that holds one for long (that thread is judged on its own:
kernel/loopwatch.py), or the thread answering it would look hung."""
LOOP_BOUND = ("net.",)
"""Methods whose state belongs to the event loop that created it (host sockets)."""
RUN_WHERE_CALLED = frozenset({"net.send", "net.recv"})
"""Loop-bound methods whose host call needs no loop: they run where they are called, under
their namespace's lock, and hop only to wait (a ``net.recv`` with nothing to read answers
:data:`~kernelfarm.net.sockets.WAIT_AT_HOME` there and runs again at home)."""


@dataclass
class ThreadState:
    """What each serving thread keeps to itself: its loop, group commit and connections."""

    loop: asyncio.AbstractEventLoop
    group_commit: GroupCommit
    conns: set[Any] = field(default_factory=set)


class LockedKernel(Kernel):
    def __init__(self, boot: BootInfo, config: Config, loop: asyncio.AbstractEventLoop,
                 provider: LockProvider) -> None:
        self.provider = provider
        self._local = threading.local()
        self._main_loop = loop
        self._flush_callables: list[Flush] = []
        self._flush_prefixes: set[str] = set()
        self._homes: dict[str, asyncio.AbstractEventLoop] = {}
        self._conn_proxies: dict[int, HomeConnection] = {}
        super().__init__(boot, config, loop, wrap=self._wrap)
        for subsystem in self.subsystems:
            subsystem.use_locks(provider.lock_for)

    # Subsystems read ``ctx.loop`` when they create loop-bound state: give them the loop
    # of the thread serving the request.
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return self._main_loop

    @loop.setter
    def loop(self, value: asyncio.AbstractEventLoop) -> None:
        self._main_loop = value

    def _state(self) -> ThreadState:
        state: ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            loop = asyncio.get_running_loop()
            state = self._local.state = ThreadState(loop, GroupCommit(loop.call_soon,
                                                                      self._flush_all))
        return state

    # -- registration: locks, then the hop to the state's home loop ------------------------

    def _wrap(self, method: Method) -> Method:
        if method.name in UNLOCKED:
            return method
        locked = self.provider.wrap(method)
        if method.name.startswith(LOOP_BOUND):
            locked = self._homed(locked)
        if method.writes:
            locked = self._holds_replies(locked)
        return locked

    def _holds_replies(self, method: Method) -> Method:
        """A write makes its thread hold replies until the next commit, if its subsystem
        flushes: another thread may have asked for the flush already, so this thread
        would not know.  Decided here, at registration, not per request."""
        handler, prefixes, state = method.handler, self._flush_prefixes, self._state
        prefix = method.name.partition(".")[0] + "."

        def holding(*args: Any) -> Any:
            try:
                return handler(*args)
            finally:
                if prefix in prefixes:
                    state().group_commit.request()

        return replace(method, handler=holding)

    def _homed(self, method: Method) -> Method:
        """Run a call on the loop its state lives on.  On another thread's loop it is one
        hop there and one back (a ``call_soon_threadsafe`` each, as a cross-CPU wake-up
        is one interrupt each way), and the caller's connection gets an :class:`Answer`
        that the hop back settles: no thread-safe future, no task, no asyncio future.
        A method of :data:`RUN_WHERE_CALLED` runs here and hops only what it awaits, or
        the whole call when it must wait on the home loop."""
        handler, keyfn, homes = method.handler, method.key, self._homes
        offset = 1 if method.wants_conn else 0
        proxies = self._conn_proxies
        runs_here = method.name in RUN_WHERE_CALLED

        def on_home_loop(*args: Any) -> Any:
            here = asyncio.get_running_loop()
            try:
                key = keyfn(args[offset:]) if keyfn is not None else None
            except Exception:
                key = None
            home = homes.setdefault(key, here) if key is not None else here
            if home is here:
                return handler(*args)  # the state lives on this loop: no hop
            if offset:
                args = (HomeConnection.of(args[0], home, proxies),) + args[1:]
            if runs_here:
                result = handler(*args)
                if not hasattr(result, "__await__"):
                    return result
                if result is not WAIT_AT_HOME:
                    answer = Answer()
                    home.call_soon_threadsafe(_answer_when_done, result,
                                              ReturnTrip(answer, here))
                    return answer
            answer = Answer()
            home.call_soon_threadsafe(_run_at_home, handler, args, ReturnTrip(answer, here))
            return answer

        return replace(method, handler=on_home_loop, is_async=True)

    def run_keyed(self, key: str, work: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """``work()`` on the loop that holds ``key``'s state (made its home if it has
        none), each of its steps under ``key``'s lock, as a homed handler runs."""
        home = self._homes.setdefault(key, asyncio.get_running_loop())
        lock = self.provider.lock_for(key)

        async def locked() -> T:
            result: T = await LockedSteps(work(), lock)
            return result

        if home is asyncio.get_running_loop():
            return locked()
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(locked(), home))

    # -- group commit across threads --------------------------------------------------------

    # Each thread runs the kernel's group commit on its own loop, for its own replies; a
    # commit runs every subsystem flush ever requested, with every lock held, because a
    # write on this thread may have been made dirty-and-requested by another thread.

    def request_flush(self, flush: Flush) -> None:
        if flush not in self._flush_callables:
            owner = getattr(flush, "__self__", None)
            name = getattr(owner, "name", None)
            if name:
                self._flush_prefixes.add(name + ".")
            self._flush_callables.append(flush)
        self._state().group_commit.request()

    def send(self, conn: Any, data: Wire) -> None:
        self._state().group_commit.send(conn, data)

    def _flush_all(self, _requested: list[Flush]) -> None:
        with self.provider.everything():
            flush_or_exit(self._flush_callables)

    def _commit_now(self) -> None:
        """Before state leaves: flush everything now; a failure exits, as in a kernel."""
        self._flush_all([])

    # -- connections belong to the thread that accepted them -------------------------------

    def connection_made(self, conn: Any) -> None:
        self._state().conns.add(conn)
        super().connection_made(conn)

    def connection_closed(self, conn: Any) -> None:
        self._state().conns.discard(conn)
        self.conns.discard(conn)

    def served_here(self) -> set[Any]:
        """Each serving thread drains only the connections it accepted."""
        return self._state().conns


class HomeConnection:
    """A client connection seen from a state's home loop: close callbacks run there."""

    def __init__(self, conn: Any, home: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.home = home

    @property
    def session(self) -> Any:
        return self.conn.session

    @classmethod
    def of(cls, conn: Any, home: asyncio.AbstractEventLoop,
           cache: dict[int, HomeConnection]) -> Any:
        if asyncio.get_running_loop() is home:
            return conn
        proxy = cache.get(id(conn))
        if proxy is None or proxy.conn is not conn:
            proxy = cache[id(conn)] = cls(conn, home)
            conn.on_close(lambda: cache.pop(id(conn), None))
        return proxy

    def on_close(self, callback: Callable[[], None]) -> None:
        home = self.home
        self.conn.on_close(lambda: home.call_soon_threadsafe(callback))


class ReturnTrip:
    """The way back of a hop: settles the caller's :class:`Answer` on the caller's loop.

    It is the :class:`~kernelfarm.rpc.answer.Sink` of an answer given on the home loop
    (a waiting ``net.recv``), so the readiness callback there hands its data straight to
    the hop back, as it would to a connection."""

    __slots__ = ("answer", "loop")

    def __init__(self, answer: Answer, loop: asyncio.AbstractEventLoop) -> None:
        self.answer = answer
        self.loop = loop

    @property
    def closed(self) -> bool:
        """Nobody wants the answer any more (its connection closed): the home loop's
        socket must not consume data for it.  Read across threads; at worst one more
        answer is made for a connection that just closed, and dropped there."""
        return self.answer.done()

    def answered(self, _msgid: int, _reserve: int, result: Any,
                 error: BaseException | None) -> None:
        answer = self.answer
        if error is None:
            self.loop.call_soon_threadsafe(answer.set_result, result)
        else:
            self.loop.call_soon_threadsafe(answer.set_exception, error)

    def finished(self, task: asyncio.Future[Any]) -> None:
        """A coroutine's task on the home loop ended (cancelled: its loop is stopping)."""
        if task.cancelled():
            self.answered(0, 0, None, TryAgain("the call's thread is stopping"))
        else:
            error = task.exception()
            self.answered(0, 0, None if error is not None else task.result(), error)


def _run_at_home(handler: Callable[..., Any], args: tuple[Any, ...], back: ReturnTrip) -> None:
    """On the state's home loop: run the call, and send its outcome back when it has one."""
    try:
        result = handler(*args)
    except Exception as exc:
        back.answered(0, 0, None, exc)
        return
    _answer_when_done(result, back)


def _answer_when_done(result: Any, back: ReturnTrip) -> None:
    """On the home loop: send ``result`` back now, or when the awaitable it is ends."""
    if isinstance(result, Answer):
        result.deliver_to(back, 0, 0)
    elif hasattr(result, "__await__"):
        asyncio.ensure_future(result).add_done_callback(back.finished)
    else:
        back.answered(0, 0, result, None)


class WorkerThreads:
    """The N-1 extra serving threads (the main thread is the first of the N)."""

    def __init__(self, kernel: LockedKernel, listen: socket.socket, count: int,
                 factory: Callable[[], Any], grace: float) -> None:
        self.kernel = kernel
        self.factory = factory
        self.grace = grace
        self._stops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.loops: list[tuple[int, asyncio.AbstractEventLoop]] = []
        """Each thread's native id and loop, for the heartbeat's watch (kernel/loopwatch.py)."""
        self._ready = threading.Barrier(count + 1)
        self._threads = [
            threading.Thread(target=self._run, args=(socket.socket(fileno=os.dup(
                listen.fileno())),), name=f"kernel-worker-{i + 1}", daemon=True)
            for i in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._ready.wait()

    def _run(self, listen: socket.socket) -> None:
        uvloop.run(self._serve(listen))

    async def _serve(self, listen: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._stops.append((loop, stop))
        self.loops.append((threading.get_native_id(), loop))
        server = await loop.create_server(self.factory, sock=listen)
        self._ready.wait()
        await stop.wait()
        server.close()
        await self.kernel.drain(self.grace)

    def stop(self) -> None:
        for loop, stop in self._stops:
            loop.call_soon_threadsafe(stop.set)
        for thread in self._threads:
            thread.join(timeout=self.grace + 5)
