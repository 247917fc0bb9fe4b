"""The supervisor's view of one kernel: its process, its control channel, its state.

A handle outlives the processes it spawns: the kernel id, core and listening socket stay
the same across restarts, so the slot table and every client's idea of the kernel's
address stay valid while the process behind them is replaced.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kernelfarm.boot import (
    BOOT_NOTIFICATION, LOADING_NOTIFICATION, READY_NOTIFICATION, BootInfo,
)
from kernelfarm.errors import ConnectionLost, KernelfarmError, Timeout
from kernelfarm.rpc.client import RpcClientConnection
from kernelfarm.rpc.protocol import encode_notification
from kernelfarm.supervisor.activity import Activity, stepping_threads, thread_activity

log = logging.getLogger("kernelfarm.supervisor")


class KernelState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ControlChannel(RpcClientConnection):
    """The supervisor's end of the socketpair: RPC calls out; the ready notification and
    the boot's progress reports in."""

    def __init__(self, on_ready: Callable[[dict[str, Any]], None],
                 on_loading: Callable[[], None]) -> None:
        super().__init__()
        self._on_ready = on_ready
        self._on_loading = on_loading

    def notification(self, method: str, params: list[Any]) -> None:
        if method == READY_NOTIFICATION and params:
            self._on_ready(params[0])
        elif method == LOADING_NOTIFICATION:
            self._on_loading()


def bind_listener(host: str, port: int = 0) -> socket.socket:
    """Bind by hand (no name lookup: a numeric host keeps the kernel at one thread)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


UNIX_PATH_MAX = 107


def bind_handoff(path: Path) -> socket.socket | None:
    """The kernel's hand-off socket (see :mod:`kernelfarm.handoff`), owner-only.

    Bound here, like the RPC listener, so a front-end's connection waits in the backlog
    while a kernel restarts.  A data dir too deep for a Unix socket path leaves the kernel
    without one: everything but ``kernelfarm socks`` still works, and the log says why.
    """
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        log.warning("no fd hand-off socket: %s is longer than a Unix socket path may be",
                    path)
        return None
    path.unlink(missing_ok=True)  # a stale one of a dead supervisor (we hold the lock)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


MALLOC_ON_HUGE_PAGES = "glibc.malloc.hugetlb=1"


def kernel_environ() -> dict[str, str]:
    """A kernel's environment: ours, with glibc's malloc on transparent huge pages.

    A snapshot forks the kernel (:mod:`kernelfarm.fs.snapshotter`), and ``fork`` copies
    the page tables of all its memory while the loop waits: 92 ms for a kernel holding a
    512 MiB volume.  With file data in 2 MiB pages there are 512 times fewer entries to
    copy (measured here: a process holding 512 MiB of 4 MiB objects forks in 70-200 ms,
    in 10 ms with this tunable, THP in ``madvise`` mode).  Tunables the user set win;
    other C libraries ignore the variable.
    """
    env = dict(os.environ)
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        env["GLIBC_TUNABLES"] = f"{tunables}:{MALLOC_ON_HUGE_PAGES}" if tunables \
            else MALLOC_ON_HUGE_PAGES
    return env


class KernelHandle:
    def __init__(self, kernel_id: int, core: int, host: str, data_dir: Path) -> None:
        self.kernel_id = kernel_id
        self.core = core
        self.listener = bind_listener(host)
        self.addr: list[Any] = list(self.listener.getsockname()[:2])
        self.handoff_path = data_dir / f"handoff-{kernel_id}.sock"
        self.handoff = bind_handoff(self.handoff_path)
        self.state = KernelState.STARTING
        self.proc: subprocess.Popen[bytes] | None = None
        self.control: ControlChannel | None = None
        self.restarts = 0
        self.boot_failures = 0
        self.ready_at: float | None = None
        self.exited: asyncio.Future[int] | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._pidfd: int | None = None
        self._alive_at = 0.0
        """When the kernel last reported progress (spawned, or reported loading: at boot,
        or while it acquires slots)."""
        self._turned_at = 0.0
        """When the latest heartbeat the kernel answered was sent: its loop turned after."""
        self._stalls: dict[int, Activity] = {}
        """Serving threads whose loops the kernel reports stalled: how each was when its
        stall was first reported, or when it last showed it was busy."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def describe(self) -> dict[str, Any]:
        return {"id": self.kernel_id, "addr": self.addr, "core": self.core, "pid": self.pid,
                "state": self.state.value,
                "handoff": str(self.handoff_path) if self.handoff is not None else None}

    async def spawn(self, boot: BootInfo, boot_timeout: float) -> None:
        """Start a kernel process and wait for its ready notification.

        Raises if the process exits or stays silent past ``boot_timeout``; the process is
        then killed and reaped, so a failed boot leaves nothing behind.  Silent means
        neither ready nor reporting progress: a kernel loading millions of files reports
        while it loads, and each report gives it another ``boot_timeout``; so does a
        sign that it is not hung (:class:`Activity`: a crowded core starves it).
        """
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        argv = [sys.executable, "-m", "kernelfarm.kernel",
                "--control-fd", str(child.fileno()),
                "--listen-fd", str(self.listener.fileno())]
        fds = [child.fileno(), self.listener.fileno()]
        if self.handoff is not None:
            argv += ["--handoff-fd", str(self.handoff.fileno())]
            fds.append(self.handoff.fileno())
        try:
            self.proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL,
                                         env=kernel_environ())
        finally:
            child.close()
        self.ready_at = None
        self._stalls = {}
        self._ready = loop.create_future()
        self.exited = loop.create_future()
        self._watch_exit(loop)
        self._alive_at = time.monotonic()
        _, self.control = await loop.connect_accepted_socket(
            lambda: ControlChannel(self._set_ready, self._set_loading), parent)
        assert self.control.transport is not None
        self.control.transport.write(encode_notification(BOOT_NOTIFICATION, [boot.to_wire()]))
        waiters: set[asyncio.Future[Any]] = {self._ready, self.exited}
        done: set[asyncio.Future[Any]] = set()
        before = self.activity()
        while not done:
            left = self._alive_at + boot_timeout - time.monotonic()
            if left <= 0:
                before = self.busy_since(before, f"reported ready or progress for "
                                                 f"{boot_timeout:.1f} s")
                if before is None:
                    break
                self._alive_at = time.monotonic()
                continue
            done, _ = await asyncio.wait(waiters, timeout=left,
                                         return_when=asyncio.FIRST_COMPLETED)
        if self._ready in done:
            self.ready_at = time.monotonic()
            return
        if self.exited in done:
            raise KernelfarmError(f"kernel {self.kernel_id} exited during boot with "
                                  f"code {self.exited.result()}")
        await self.kill()
        raise Timeout(f"kernel {self.kernel_id} did not report ready or progress within "
                      f"{boot_timeout} s")

    def _set_loading(self) -> None:
        self._alive_at = time.monotonic()

    def _set_ready(self, info: dict[str, Any]) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(info)

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Learn of the process's exit from a pidfd: no polling, no SIGCHLD races."""
        assert self.proc is not None and self.exited is not None
        proc, exited = self.proc, self.exited
        pidfd = os.pidfd_open(proc.pid)
        self._pidfd = pidfd

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if self._pidfd == pidfd:
                self._pidfd = None
            code = proc.wait()
            if not exited.done():
                exited.set_result(code)
            if self.control is not None:
                self.control.close()

        loop.add_reader(pidfd, on_exit)

    @property
    def reachable(self) -> bool:
        """Running, with a control channel that is open."""
        return (self.state is KernelState.RUNNING and self.control is not None
                and not self.control.closed)

    async def call(self, method: str, *params: Any, timeout: float | None = 10.0) -> Any:
        """Call the kernel over its control channel; ``timeout=None`` for a call whose
        length has no bound (loading slots): the heartbeat watches the kernel meanwhile,
        and its exit fails the call."""
        if self.control is None or self.control.closed:
            raise ConnectionLost(f"kernel {self.kernel_id} has no control channel")
        return await self.control.call(method, *params, timeout=timeout)

    async def ping(self, timeout: float) -> dict[str, Any]:
        """The kernel's answer to ``kernel.ping``; ``Timeout`` if it is hung: silent for
        ``timeout`` (``heartbeat_timeout``) and not busy meanwhile (:class:`Activity`).
        A kernel whose loop is held longer by one turn of real work (a client's batch of
        256 volume creations took 10 s at load 8), or that a crowded core starves, gets
        another ``timeout`` each time: killing it would drop every connection it serves
        for work it was doing.  The same holds for each serving thread of a locked
        kernel, judged on its own (:meth:`check_stalls`)."""
        before = self.activity()
        stepping: dict[int, Activity] | None = None  # see waiting_for_a_step
        sent = time.monotonic()
        answer = asyncio.ensure_future(self.call("kernel.ping", timeout=None))
        try:
            while True:
                done, _ = await asyncio.wait({answer}, timeout=timeout)
                if done:
                    pong: dict[str, Any] = answer.result()
                    self._turned_at = sent
                    self.check_stalls(pong.get("stalled", ()), timeout)
                    return pong
                busy = self.busy_since(before, f"answered its heartbeat for {timeout:.1f} s")
                if busy is None:
                    busy, stepping = self.waiting_for_a_step(before, stepping, timeout)
                else:
                    stepping = None
                before = busy
        finally:
            answer.cancel()

    def waiting_for_a_step(self, before: Activity | None,
                           stepping: dict[int, Activity] | None, timeout: float
                           ) -> tuple[Activity, dict[int, Activity]]:
        """The main thread neither answered the heartbeat nor worked for ``timeout``:
        ``Timeout``, unless it is asleep waiting for another thread that is in the middle
        of a step and works (a locked kernel's main thread serves clients too, and waits
        for the lock such a step holds, as a serving thread does: :meth:`check_stalls`).
        Those threads are noted at the first look and judged at the next, ``timeout``
        later, by what they did meanwhile; one that idled in its loop's wait at a look
        holds no lock.  Returns the main thread's activity and the threads noted."""
        hung = Timeout(f"kernel {self.kernel_id} did not answer its heartbeat within "
                       f"{timeout:.1f} s")
        main = self.activity()
        if main is None or before is None or main.runnable or self.proc is None:
            raise hung  # gone, or spinning with its core: not waiting for anyone
        now = stepping_threads(self.proc.pid)
        if stepping is None:
            if not now:
                raise hung
            return main, now
        working = [tid for tid, after in now.items()
                   if tid in stepping and after.working_since(stepping[tid])]
        if not working:
            raise hung
        log.warning("kernel %d has not answered its heartbeat for %.1f s but is not hung "
                    "(waiting for its thread %d, which works): waiting", self.kernel_id,
                    timeout, min(working))
        return main, now

    async def call_progressing(self, method: str, *params: Any, stall: float) -> Any:
        """Call the kernel and wait for the answer as long as the call makes progress;
        ``Timeout`` once it has made none for ``stall`` seconds (``scale_stall_timeout``).

        A slot move's calls take what their slots take (flushing and closing thousands of
        volumes, loading millions of files), so no fixed deadline fits.  Progress is
        either a report (a sliced ``kernel.acquire`` reports every quarter of ``stall``),
        or the call holding the kernel's loop by its own work: no heartbeat sent meanwhile
        was answered, and the heartbeat kills the kernel if that work is hung (which fails
        the call).  A call that is stuck while the loop turns -- heartbeats answered, nothing
        reported -- fails, and the step is rolled back.  The kernel is killed first: its
        lifecycle restarts it with the current table, so it holds exactly the table's
        slots, and a stuck acquire that ended late cannot make it own slots the table
        gives back to their source.
        """
        answer = asyncio.ensure_future(self.call(method, *params, timeout=None))
        try:
            since = time.monotonic()
            while True:
                done, _ = await asyncio.wait({answer}, timeout=stall)
                if done:
                    return answer.result()
                now = time.monotonic()
                if self._alive_at <= since and self._turned_at > since:
                    log.error("kernel %d: %s made no progress for %.1f s: killing it",
                              self.kernel_id, method, now - since)
                    await self.kill()
                    raise Timeout(f"kernel {self.kernel_id}: {method} made no progress for "
                                  f"{now - since:.1f} s (its loop turns, and it reported "
                                  "none)")
                since = now  # progress reported, or the loop held by the call
        finally:
            answer.cancel()

    def check_stalls(self, stalled: list[list[float]], timeout: float) -> None:
        """``Timeout`` if a serving thread of a locked kernel is hung: its loop has not
        turned (``stalled``, ``[tid, seconds]`` pairs from the kernel's pong: see
        :mod:`kernelfarm.kernel.loopwatch`) for ``timeout`` and it shows no work
        meanwhile.  Each thread is judged on its own: the main thread answering the
        heartbeat says nothing of the others, and the process's activity would let any
        working thread vouch for a hung one.  Only another stalled thread that works may
        vouch for one that shows none: that one waits for it (for a lock it holds
        through a long call, for the GIL), and is judged again once it is free."""
        now = time.monotonic()
        first: dict[int, Activity | None] = {}
        due: dict[int, tuple[Activity, Activity | None, float]] = {}
        for tid, silent in stalled:
            tid = int(tid)
            before = self._stalls.get(tid)
            if before is None:
                first[tid] = self.activity(tid)
            else:
                due[tid] = (before, self.activity(tid), silent)
        working = {tid for tid, (before, after, _) in due.items()
                   if after is not None and after.working_since(before)}
        watched = {tid: activity for tid, activity in first.items() if activity is not None}
        for tid, (before, after, silent) in due.items():
            if after is None:
                continue  # the thread is gone: its loop is no more reported
            if now - before.at < timeout:
                watched[tid] = before
                continue
            if tid in working:
                reason = after.describe(before)
            elif working:
                reason = f"waiting for its thread {min(working)}, which works"
            else:
                raise Timeout(f"kernel {self.kernel_id}: its serving thread {tid} has not "
                              f"turned its loop for {silent:.1f} s and is not busy")
            log.warning("kernel %d has not turned the loop of its thread %d for %.1f s but "
                        "is not hung (%s): waiting", self.kernel_id, tid, silent, reason)
            watched[tid] = after
        self._stalls = watched

    def busy_since(self, before: Activity | None, silent: str) -> Activity | None:
        """The activity of the kernel's main thread now if it was busy, not hung, since
        ``before`` (said in the log, with what it has not done: ``silent``); ``None`` if
        it is hung or gone."""
        now = self.activity()
        if now is None or before is None or not now.working_since(before):
            return None
        log.warning("kernel %d has not %s but is not hung (%s): waiting", self.kernel_id,
                    silent, now.describe(before))
        return now

    def activity(self, tid: int | None = None) -> Activity | None:
        """What the kernel's thread ``tid`` (default: its main thread, which answers the
        heartbeat) is doing, as the OS sees it; ``None`` if it is gone."""
        if self.proc is None or self.proc.returncode is not None:
            return None
        return thread_activity(self.proc.pid, self.proc.pid if tid is None else tid)

    async def stop(self, timeout: float) -> None:
        """Ask the kernel to stop cleanly; SIGTERM, then SIGKILL if it does not exit."""
        if self.proc is None or self.exited is None or self.exited.done():
            return
        try:
            await self.call("kernel.stop", timeout=timeout / 2)
        except (KernelfarmError, OSError):
            self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except asyncio.TimeoutError:
            log.warning("kernel %d did not stop within %.1f s: killing it",
                        self.kernel_id, timeout)
            await self.kill()

    async def kill(self) -> None:
        if self.exited is None or self.exited.done():
            return
        self._signal(signal.SIGKILL)
        await asyncio.shield(self.exited)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.listener.close()
        if self.handoff is not None:
            self.handoff.close()
            self.handoff = None
            self.handoff_path.unlink(missing_ok=True)
