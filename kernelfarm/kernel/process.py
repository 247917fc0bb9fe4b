"""A kernel process from birth to exit: boot message, pinning, serving, clean stop.

The supervisor spawns ``python -m kernelfarm.kernel --control-fd C --listen-fd L``.  The
listening socket was bound once by the supervisor, so a restarted kernel serves the same
address and connections made while it restarts wait in the backlog instead of failing.
All set-up happens here, in the child (pinning, descriptors, uvloop, the loop), as gunicorn
and uvicorn do.  The kernel never outlives its supervisor: the control socketpair reaching
EOF stops it cleanly, and ``PR_SET_PDEATHSIG`` with SIGKILL covers a supervisor killed with
SIGKILL — SIGKILL because it needs nothing from the kernel's loop, which may be busy (a
handled SIGTERM waits for the loop to come round; acknowledged writes are already durable).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import fcntl
import inspect
import logging
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Awaitable

import msgpack
import psutil
import uvloop

from kernelfarm.accel import compiled
from kernelfarm.boot import (
    BOOT_NOTIFICATION, EXIT_BOOT_FAILED, LOADING_NOTIFICATION, READY_NOTIFICATION, BootInfo,
)
from kernelfarm.config import Config
from kernelfarm.errors import to_wire
from kernelfarm.heap import keep_freed_memory
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.kernel.loopwatch import LoopWatch
from kernelfarm.kernel.syncer import Syncer
from kernelfarm.net.subsystem import NetSubsystem
from kernelfarm.rpc.meter import Usage
from kernelfarm.rpc.protocol import Wire, make_unpacker
from kernelfarm.rpc.server import ConnectionLimit, ServerConnection, connection_factory
from kernelfarm.steps import run_sliced

log = logging.getLogger("kernelfarm.kernel")

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 2.0
FD_RESERVE = 64
"""Descriptors kept for the kernel itself beyond connections, sockets and journals:
listener, control channel, data-dir lock, snapshots being written, stdio, uvloop's own."""


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to signal us when the supervisor dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the control socket EOF still stops us
        pass


def read_boot(control: socket.socket, timeout: float = 30.0) -> tuple[BootInfo, bytes]:
    """Block until the supervisor's boot notification arrives on the control socket.

    Returns it with the bytes that came behind it in the same reads: the supervisor may
    write its first control call right after the notification (a kernel restarted in the
    middle of a slot move gets that move's ``kernel.acquire``), and those bytes belong to
    the control channel served once the kernel runs.  Dropping them left the call
    unanswered and the move waiting for ever."""
    unpacker = make_unpacker(64 * 1024 * 1024)
    received = bytearray()
    control.settimeout(timeout)
    try:
        while True:
            data = control.recv(65536)
            if not data:
                raise EOFError("supervisor closed the control socket before boot")
            received += data
            unpacker.feed(data)
            for obj in unpacker:
                if (isinstance(obj, list) and len(obj) == 3 and obj[0] == 2
                        and obj[1] == BOOT_NOTIFICATION):
                    return BootInfo.from_wire(obj[2][0]), bytes(received[unpacker.tell():])
                raise ValueError(f"expected the boot notification, got {obj!r:.100}")
    finally:
        control.setblocking(False)


class AdminService:
    """The supervisor's side door into a kernel: the control socketpair, nothing else.

    Methods that change ownership or stop the kernel exist only here, never on the kernel's
    public listener.  Everything else falls through to the kernel (ping, stats).
    """

    def __init__(self, kernel: Kernel, stop: asyncio.Event) -> None:
        self.kernel = kernel
        self.stop = stop
        self.conn: ServerConnection | None = None
        self.watch: LoopWatch | None = None
        """A locked kernel's other serving loops, reported stalled in the ping."""
        self.methods: dict[str, Any] = {
            "kernel.set_table": kernel.set_table,
            "kernel.set_tenants": kernel.set_tenants,
            "kernel.freeze": kernel.freeze,
            "kernel.thaw": kernel.thaw,
            "kernel.release": kernel.release,
            "kernel.acquire": self._acquire,
            "kernel.hand_over": kernel.hand_over,
            "kernel.stop": self._stop,
        }

    def _acquire(self, slots: list[int]) -> Awaitable[int]:
        """Load slots in slices, reporting progress often enough that the supervisor's
        ``scale_stall_timeout`` sees a long load going on."""
        return self.kernel.acquire_sliced(
            slots, self.report_loading, self.kernel.config.supervisor.scale_stall_timeout / 4)

    def _stop(self) -> bool:
        self.stop.set()
        return True

    def handle(self, conn: ServerConnection, msgid: int, method: str,
               params: Sequence[Any]) -> list[Any] | None:
        handler = self.methods.get(method)
        if handler is None:
            reply = self.kernel.handle(conn, msgid, method, params)
            if (self.watch is not None and method == "kernel.ping" and reply is not None
                    and reply[2] is None):
                reply[3]["stalled"] = self.watch.stalled()  # the heartbeat's, on this side
            return reply
        try:
            result = handler(*params)
        except Exception as exc:
            log.exception("admin call %s failed", method)
            return [1, msgid, to_wire(exc), None]
        if inspect.isawaitable(result):  # a long one (acquire): the loop serves meanwhile
            conn.start_call(msgid, result)
            return None
        return [1, msgid, None, result]

    def report_loading(self, steps: int) -> None:
        """Tell the supervisor that loading goes on (each report extends the boot
        deadline, or a slot move's: a kernel loading a big volume is busy, not hung)."""
        assert self.conn is not None
        self.conn.write(msgpack.packb([2, LOADING_NOTIFICATION, [{"steps": steps}]]))

    def send(self, conn: ServerConnection, data: Wire) -> None:
        self.kernel.send(conn, data)

    def fault(self, exc: BaseException) -> dict[str, Any]:
        return self.kernel.fault(exc)

    def connection_made(self, conn: ServerConnection) -> None:
        # Trusted, with a usage of its own: the supervisor's pings are no tenant's traffic.
        conn.session = dataclasses.replace(self.kernel.gate.trusted, usage=Usage())
        self.conn = conn

    def connection_closed(self, conn: ServerConnection) -> None:
        log.info("control channel closed: the supervisor is gone; stopping")
        self.stop.set()


def hold_data_dir(data_dir: Path) -> int:
    """Share-lock ``kernels.lock`` for our lifetime: a new supervisor waits for it."""
    fd = os.open(data_dir / "kernels.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return fd


def fit_descriptors(config: Config) -> Config:
    """Raise the descriptor limit where the host allows, and fit the caps under it.

    A kernel needs a descriptor per connection, per net socket and per open journal; if
    they ran out, the next write needing a journal file would fail.  So the soft limit is
    raised towards what ``rpc.max_connections + net.max_kernel_sockets + fs.open_journals``
    need, and if the hard limit is lower, the connection and socket caps are lowered to
    fit: running out is then a refused connection or ``EMFILE``, never a broken kernel.
    """
    rpc, net, fs = config.rpc, config.net, config.fs
    need = rpc.max_connections + net.max_kernel_sockets + fs.open_journals + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        wanted = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d: %s", soft, exc)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return config
    room = max(2, soft - fs.open_journals - FD_RESERVE)
    connections = max(1, room * rpc.max_connections
                      // (rpc.max_connections + net.max_kernel_sockets))
    sockets = max(1, room - connections)
    log.warning("descriptor limit %d < %d needed: serving at most %d connections and %d "
                "net sockets", soft, need, connections, sockets)
    return dataclasses.replace(config, sections={
        **config.sections,
        "rpc": dataclasses.replace(rpc, max_connections=connections),
        "net": dataclasses.replace(net, max_kernel_sockets=sockets)})


def make_kernel(boot: BootInfo, config: Config, loop: asyncio.AbstractEventLoop) -> Kernel:
    """A unicpu kernel, or in locked mode the baseline with its locks applied.

    Locked with one thread is the unicpu kernel itself with its handlers wrapped in
    locks, and nothing else: the thread bookkeeping of :class:`LockedKernel` (per-thread
    commits, loop hops) is for several threads, so leaving it out makes the difference
    to a partitioned kernel the locks alone (``unicpu-locks`` in the benchmarks).
    """
    if boot.mode != "locked":
        return Kernel(boot, config, loop)
    from kernelfarm.kernel.locks import LockProvider

    provider = LockProvider(config.farm.locking)
    if boot.threads == 1:
        return Kernel(boot, config, loop, wrap=provider.wrap)
    from kernelfarm.kernel.locked import LockedKernel

    return LockedKernel(boot, config, loop, provider)


def pin(boot: BootInfo) -> None:
    """One core for a unicpu kernel; as many cores as threads for the locked baseline."""
    if boot.mode == "locked":
        allowed = sorted(os.sched_getaffinity(0))
        cores = allowed[:boot.threads] if boot.threads < len(allowed) else allowed
    else:
        cores = [boot.core]
    psutil.Process().cpu_affinity(cores)


async def serve(boot: BootInfo, config: Config, control: socket.socket,
                listen: socket.socket, handoff: socket.socket | None = None,
                early: bytes = b"", syncer: Syncer | None = None) -> int:
    """Run the kernel until told to stop; ``early``: control bytes read with the boot
    notification (:func:`read_boot`), served first; ``syncer``: the child its group
    commit syncs in (sync-behind; ``None``: inline)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    kernel = make_kernel(boot, config, loop)
    if syncer is not None:
        kernel.group_commit.sync_behind(syncer, loop)
    kernel.data_dir.mkdir(parents=True, exist_ok=True)
    hold_data_dir(kernel.data_dir)
    admin = AdminService(kernel, stop)
    _, channel = await loop.connect_accepted_socket(connection_factory(admin, config.rpc),
                                                    control)
    if early:
        channel.data_received(early)
    # Loading may take longer than the boot timeout (millions of files): it runs in
    # slices of the loop and reports progress, which extends the supervisor's deadline.
    await run_sliced(kernel.loading(kernel.table.slots_of(kernel.kernel_id)),
                     admin.report_loading, config.supervisor.boot_timeout / 4)
    # The public listener's params arrive as tuples (no list per message to build):
    # every handler of a kernel takes its params as any sequence.
    factory = connection_factory(
        kernel, config.rpc, kernel.meter,
        ConnectionLimit(config.rpc.max_connections, evictable=kernel.gate.unproven),
        tuples=True)
    server = await loop.create_server(factory, sock=listen)
    net = next(s for s in kernel.subsystems if isinstance(s, NetSubsystem))
    workers = None
    if boot.mode == "locked" and boot.threads > 1:
        from kernelfarm.kernel.locked import LockedKernel, WorkerThreads

        assert isinstance(kernel, LockedKernel)  # make_kernel built one: boot.mode is locked
        net.handoff.run_keyed = kernel.run_keyed  # namespaces live on every thread's loop
        workers = WorkerThreads(kernel, listen, boot.threads - 1, factory, STOP_GRACE_S)
        workers.start()
        admin.watch = LoopWatch(workers.loops)
    if handoff is not None:
        net.handoff.serve(handoff)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    assert admin.conn is not None
    admin.conn.write(msgpack.packb([2, READY_NOTIFICATION, [{
        "pid": os.getpid(), "threads": psutil.Process().num_threads()}]]))
    log.info("kernel %d ready: pid %d, core %d, %d slots, compiled: %s", kernel.kernel_id,
             os.getpid(), kernel.core, sum(kernel.owned), ", ".join(compiled()) or "none")
    await stop.wait()
    log.info("kernel %d stopping", kernel.kernel_id)
    server.close()
    if workers is not None:
        await asyncio.to_thread(workers.stop)
    await kernel.drain(STOP_GRACE_S)
    kernel.close()
    return 0


def setup_logging(kernel_id: int | str) -> None:
    logging.basicConfig(
        level=os.environ.get("KERNELFARM_LOG", "INFO"), stream=sys.stderr,
        format=f"%(asctime)s kernel[{kernel_id}] %(levelname)s %(message)s", force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kernelfarm-kernel")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--handoff-fd", type=int, help="Unix socket for fd hand-offs")
    args = parser.parse_args(argv)
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    control = socket.socket(fileno=args.control_fd)
    listen = socket.socket(fileno=args.listen_fd)
    handoff = None if args.handoff_fd is None else socket.socket(fileno=args.handoff_fd)
    setup_logging("?")
    try:
        boot, early = read_boot(control)
        setup_logging(boot.kernel_id)
        if os.getppid() != boot.supervisor_pid:
            raise RuntimeError("the supervisor died before boot")
        pin(boot)
        keep_freed_memory()  # for the next writes, instead of zeroed pages from the host
        config = fit_descriptors(Config.from_dict(boot.config))
        # One loop, one group commit: its fdatasyncs run behind the loop, in a child
        # forked now, before the loop exists (the locked baseline's threads sync inline).
        syncer = Syncer.fork() if boot.mode != "locked" or boot.threads == 1 else None
    except Exception as exc:
        log.error("boot failed: %s", exc)
        return EXIT_BOOT_FAILED
    started = time.monotonic()
    try:
        return uvloop.run(serve(boot, config, control, listen, handoff, early, syncer))
    except Exception:
        # The supervisor knows whether we reported ready, so it tells a failed boot from
        # a crash by itself.
        log.exception("kernel %d failed after %.1f s", boot.kernel_id,
                      time.monotonic() - started)
        return 1
