"""The supervisor: spawns, pins, watches and restarts kernels; never on the data path.

Signal handlers only set flags or enqueue; the event loop does the work (gunicorn's
arbiter).  Each kernel has a lifecycle task that boots it, heartbeats it and restarts it
when it exits or stops answering, with exponential back-off; a kernel that fails to boot
``boot_retries`` times in a row is marked failed instead of looping forever.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Awaitable, Callable

from kernelfarm import durable
from kernelfarm.auth.store import TenantStore
from kernelfarm.auth.table import TenantTable
from kernelfarm.boot import BootInfo
from kernelfarm.config import Config, data_path
from kernelfarm.errors import ConfigError, KernelfarmError, Timeout
from kernelfarm.hostport import parse_hostport
from kernelfarm.partition import NSLOTS, SlotTable, initial_assignment
from kernelfarm.rpc.server import ConnectionLimit, connection_factory
from kernelfarm.supervisor.control import ControlService
from kernelfarm.supervisor.handle import KernelHandle, KernelState, bind_listener
from kernelfarm.supervisor.metrics import MetricsEndpoint
from kernelfarm.supervisor.notify import notify
from kernelfarm.supervisor.scaling import Scaler, most_kernels
from kernelfarm.supervisor.tenants import TenantRegistry

log = logging.getLogger("kernelfarm.supervisor")

KERNELS_LOCK = "kernels.lock"
"""Every kernel holds a shared flock on this file for as long as it lives."""

SHORT_RUN_S = 5.0
"""A kernel that dies within this long after boot counts toward its crash streak."""


def allowed_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def resolve_count(value: int | str, cores: list[int]) -> int:
    return len(cores) if value == "auto" else int(value)


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = data_path(config)
        self.cores = allowed_cores()
        most = most_kernels(config.supervisor.max_kernels, len(self.cores))
        locked = config.farm.mode == "locked"
        key = "farm.threads" if locked else "farm.kernels"
        workers = resolve_count(config.farm.threads if locked else config.farm.kernels,
                                self.cores)
        if workers > most:  # refused before anything starts, as `scale` refuses it
            raise ConfigError(f"{key} = {workers}: this farm runs at most {most} "
                              f"(supervisor.max_kernels; 0 = four per allowed core, "
                              f"{len(self.cores)} allowed here)", key=key)
        self.kernels: dict[int, KernelHandle] = {}
        self.table: SlotTable | None = None
        self.started = time.time()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._ops: dict[int, tuple[float, int, float]] = {}
        """kernel id -> (monotonic time, ops total, ops/s) from the latest heartbeat."""
        self._lock_fd: int | None = None
        self.scaler = Scaler(self)
        self.tenants = TenantRegistry(TenantStore(self.data_dir), self._tenants_changed)
        self.control: ControlService | None = None
        self.supervisor_addrs: list[list[Any]] = []
        """Our listeners (control, metrics): the kernels keep namespaces off them."""

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, on_ready: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Serve until SIGTERM/SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        self._lock_data_dir()
        try:
            self.tenants.open()
        except BaseException:
            self._unlock_data_dir()
            raise
        if not self.config.auth.required:
            log.warning("[auth] required = false: anyone who can reach the farm's ports "
                        "may use every volume, every namespace and the control methods")
        await self._wait_for_old_kernels()
        farm = self.config.farm
        count = resolve_count(farm.kernels, self.cores)
        if farm.mode == "locked":
            count = 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        loop.add_signal_handler(signal.SIGTTIN, self._on_scale_signal, +1)
        loop.add_signal_handler(signal.SIGTTOU, self._on_scale_signal, -1)
        interrupted = self.scaler.record.interrupted()
        if interrupted is not None:
            log.warning("the previous supervisor stopped in the middle of moving slots %s; "
                        "their data is on disk and every slot is assigned afresh",
                        interrupted)
        control_sock = self._bind(farm.control, "control", "farm.control")
        metrics_sock = None
        if self.config.metrics.enabled:
            try:
                metrics_sock = self._bind(self.config.metrics.listen, "metrics",
                                          "metrics.listen")
            except ConfigError:
                control_sock.close()
                raise
        self.supervisor_addrs = [list(s.getsockname()[:2])
                                 for s in (control_sock, metrics_sock) if s is not None]
        self.control = ControlService(self)
        server = await loop.create_server(
            connection_factory(self.control, self.config.rpc,
                               limit=ConnectionLimit(self.config.rpc.max_connections,
                                                     evictable=self.control.gate.unproven)),
            sock=control_sock)
        metrics = MetricsEndpoint(self)
        if metrics_sock is not None:
            await metrics.start(metrics_sock)
        try:
            ids = list(range(count))
            self.table = initial_assignment(ids)
            for kid in ids:
                self.kernels[kid] = KernelHandle(kid, self.cores[kid % len(self.cores)],
                                                 farm.host, self.data_dir)
            booted = [asyncio.Event() for _ in ids]
            for kid in ids:
                self.spawn_task(self._lifecycle(self.kernels[kid], booted[kid]))
            all_booted = self.spawn_task(asyncio.gather(*(e.wait() for e in booted)))
            stopped = self.spawn_task(self._stop.wait())
            await asyncio.wait({all_booted, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if self._all_failed():
                log.critical("every kernel failed to boot; giving up")
                return 1
            if on_ready is not None and not self._stop.is_set():
                on_ready({"event": "ready", "control": list(control_sock.getsockname()[:2]),
                          "metrics": list(metrics_sock.getsockname()[:2])
                          if metrics_sock is not None else None,
                          "pid": os.getpid(),
                          "kernels": [h.describe() for h in self.kernels.values()]})
            if not self._stop.is_set():
                notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {len(self.kernels)} "
                       f"kernels, control {farm.control}")
            await self._stop.wait()
            return 1 if self._all_failed() else 0
        finally:
            notify("STOPPING=1")
            metrics.close()
            server.close()
            await self._shutdown()
            self._unlock_data_dir()

    def _bind(self, address: str, what: str, key: str) -> socket.socket:
        """Bind one of the supervisor's own listeners; a failure names the address."""
        host, port = parse_hostport(address)
        try:
            return bind_listener(host, port)
        except OSError as exc:
            self._unlock_data_dir()
            raise ConfigError(f"cannot serve {what} on {address}: {exc.strerror or exc}",
                              key=key) from exc

    def spawn_task(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``coro`` as one of the supervisor's tasks (cancelled when it stops)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_stop_signal(self, sig: int) -> None:
        log.info("received %s: stopping", signal.Signals(sig).name)
        self._stop.set()

    def _on_reload_signal(self) -> None:
        log.warning("SIGHUP: reloading the tenants; the config is not reloaded (restart to "
                    "apply a new config; the farm keeps serving)")
        self.spawn_task(self.tenants.reload())

    async def _tenants_changed(self, table: TenantTable) -> None:
        """Every server adopts ``table`` before the change is answered."""
        if self.control is not None:
            self.control.tenants_changed(table)
        running = [h for h in self.kernels.values() if h.state is KernelState.RUNNING]
        await asyncio.gather(*(self._push_tenants(h, table) for h in running))

    async def _push_tenants(self, handle: KernelHandle, table: TenantTable) -> None:
        try:
            await handle.call("kernel.set_tenants", table.to_wire())
        except KernelfarmError as exc:
            # It is restarting: it boots with the current table, so it catches up.
            log.warning("kernel %d missed tenant table %d: %s", handle.kernel_id,
                        table.version, exc)

    def _on_scale_signal(self, delta: int) -> None:
        """SIGTTIN adds a kernel, SIGTTOU removes one (gunicorn's vocabulary)."""
        target = len(self.kernels) + delta
        if target < 1:
            log.warning("SIGTTOU ignored: the farm keeps at least one kernel")
            return
        log.info("received %s: scaling to %d kernels",
                 "SIGTTIN" if delta > 0 else "SIGTTOU", target)
        self.spawn_task(self._scale_logged(target))

    async def _scale_logged(self, n: int) -> None:
        try:
            await self.scaler.scale(n)
        except Exception:
            log.exception("scaling to %d kernels failed", n)

    # -- growing and shrinking (the scaler drives these) ----------------------------------

    async def add_kernel(self, kid: int) -> KernelHandle:
        """Start kernel ``kid`` owning no slot yet, and tell every kernel its address."""
        handle = KernelHandle(kid, self.cores[kid % len(self.cores)], self.config.farm.host,
                              self.data_dir)
        self.kernels[kid] = handle
        assert self.table is not None
        # Its port is bound already: every namespace must be kept off it before the new
        # kernel serves what arrives there.
        await self.publish(self.table.with_moves([], self.table.epoch + 1))
        booted = asyncio.Event()
        self.spawn_task(self._lifecycle(handle, booted))
        await booted.wait()
        if handle.state is not KernelState.RUNNING:
            del self.kernels[kid]
            handle.close()
            raise KernelfarmError(f"new kernel {kid} failed to boot")
        assert self.table is not None
        await self.publish(self.table.with_moves([], self.table.epoch + 1))
        return handle

    async def remove_kernel(self, kid: int) -> None:
        """Stop a kernel that owns no slot any more, then forget it."""
        assert self.table is not None
        if self.table.counts().get(kid):
            raise KernelfarmError(f"kernel {kid} still owns slots")
        handle = self.kernels[kid]
        handle.state = KernelState.STOPPING
        await handle.stop(self.config.supervisor.shutdown_timeout)
        del self.kernels[kid]
        handle.close()
        self._ops.pop(kid, None)
        await self.publish(self.table.with_moves([], self.table.epoch + 1))

    async def wait_running(self, handles: list[KernelHandle]) -> None:
        """Wait until every kernel of ``handles`` runs and can be called.  A kernel that
        just died still reads RUNNING until its restart begins, but its control channel is
        closed: waiting on the channel too keeps a retried step from burning its attempts
        in that gap."""
        deadline = time.monotonic() + 2 * self.config.supervisor.boot_timeout
        while not all(h.reachable for h in handles):
            if any(h.state is KernelState.FAILED for h in handles) or \
                    time.monotonic() > deadline:
                raise KernelfarmError("a kernel needed for the move is not running")
            await asyncio.sleep(0.01)

    async def publish(self, table: SlotTable) -> None:
        """Make ``table`` current here and on every running kernel.

        A kernel adopting a table releases and loads the slots it changes, with its loop
        held, for as long as that takes (a rollback may load thousands of volumes): it is
        waited for while it makes progress, as a scaling step is
        (:meth:`KernelHandle.call_progressing`), never for a fixed time.  One that is
        stuck while its loop turns is killed after ``scale_stall_timeout``, and boots
        with the current table."""
        self.table = table
        addrs = [[kid, h.addr] for kid, h in self.kernels.items()]
        ranges = table.to_ranges()
        running = [h for h in self.kernels.values() if h.state is KernelState.RUNNING]
        stall = self.config.supervisor.scale_stall_timeout
        results = await asyncio.gather(
            *(h.call_progressing("kernel.set_table", table.epoch, ranges, addrs, stall=stall)
              for h in running),
            return_exceptions=True)
        for handle, result in zip(running, results, strict=True):
            if isinstance(result, Exception):
                # It is restarting: it boots with the current table, so it catches up.
                log.warning("kernel %d missed epoch %d: %s", handle.kernel_id, table.epoch,
                            result)

    def _all_failed(self) -> bool:
        return bool(self.kernels) and all(
            h.state is KernelState.FAILED for h in self.kernels.values())

    async def _shutdown(self) -> None:
        self._stop.set()
        await self.scaler.abort()  # do not start kernels while stopping them
        timeout = self.config.supervisor.shutdown_timeout
        for handle in self.kernels.values():
            if handle.state is not KernelState.FAILED:
                handle.state = KernelState.STOPPING
        await asyncio.gather(*(h.stop(timeout) for h in self.kernels.values()),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self.kernels.values():
            handle.state = KernelState.STOPPED if handle.state is not KernelState.FAILED \
                else handle.state
            handle.close()
        log.info("all kernels stopped")

    async def _lifecycle(self, handle: KernelHandle, booted: asyncio.Event) -> None:
        cfg = self.config.supervisor
        crash_streak = 0
        while not self._stop.is_set():
            boot = self._boot_info(handle)
            try:
                await handle.spawn(boot, cfg.boot_timeout)
            except Exception as exc:  # whatever stops a boot counts toward failing
                handle.boot_failures += 1
                log.error("kernel %d boot failed (%d/%d): %s", handle.kernel_id,
                          handle.boot_failures, cfg.boot_retries, exc)
                if handle.boot_failures >= cfg.boot_retries:
                    handle.state = KernelState.FAILED
                    handle.close()  # connections are refused, not left in a backlog
                    log.critical("kernel %d marked failed after %d failed boots",
                                 handle.kernel_id, handle.boot_failures)
                    booted.set()
                    if self._all_failed():
                        self._stop.set()
                    return
                await self._backoff(handle.boot_failures)
                continue
            handle.boot_failures = 0
            handle.state = KernelState.RUNNING
            booted.set()
            log.info("kernel %d running: pid %s, core %d, %s", handle.kernel_id, handle.pid,
                     handle.core, handle.addr)
            if boot.tenants.get("version") != self.tenants.table.version:
                self.spawn_task(self._push_tenants(handle, self.tenants.table))
            heartbeat = self.spawn_task(self._heartbeat(handle))
            assert handle.exited is not None
            code = await handle.exited
            heartbeat.cancel()
            if self._stop.is_set() or handle.state is KernelState.STOPPING:
                return
            handle.restarts += 1
            handle.state = KernelState.RESTARTING
            ran = time.monotonic() - (handle.ready_at or time.monotonic())
            crash_streak = crash_streak + 1 if ran < SHORT_RUN_S else 0
            log.warning("kernel %d (pid %s) exited with code %s after %.1f s; restarting",
                        handle.kernel_id, handle.pid, code, ran)
            await self._backoff(crash_streak)

    async def _backoff(self, streak: int) -> None:
        cfg = self.config.supervisor
        delay = min(cfg.restart_backoff_max, cfg.restart_backoff * (2 ** max(streak - 1, 0)))
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _heartbeat(self, handle: KernelHandle) -> None:
        cfg = self.config.supervisor
        while True:
            await asyncio.sleep(cfg.heartbeat_interval)
            try:
                pong = await handle.ping(cfg.heartbeat_timeout)
            except Timeout as exc:
                log.error("%s: killing it", exc)
                await handle.kill()
                return
            except KernelfarmError:
                return  # the exit watcher takes it from here
            self._record_ops(handle.kernel_id, pong.get("ops", 0))

    def _record_ops(self, kernel_id: int, total: int) -> None:
        now = time.monotonic()
        previous = self._ops.get(kernel_id)
        rate = 0.0
        if previous is not None and now > previous[0] and total >= previous[1]:
            rate = (total - previous[1]) / (now - previous[0])
        self._ops[kernel_id] = (now, total, rate)

    def _boot_info(self, handle: KernelHandle) -> BootInfo:
        assert self.table is not None
        farm = self.config.farm
        return BootInfo(
            kernel_id=handle.kernel_id, core=handle.core, epoch=self.table.epoch,
            ranges=self.table.to_ranges(),
            addrs={kid: h.addr for kid, h in self.kernels.items()},
            config=self.config.to_dict(), data_dir=str(self.data_dir),
            supervisor_pid=os.getpid(), mode=farm.mode,
            threads=resolve_count(farm.threads, self.cores), supervisor_addrs=self.supervisor_addrs,
            tenants=self.tenants.table.to_wire())

    # -- the data dir belongs to one supervisor at a time ---------------------------------

    def _lock_data_dir(self) -> None:
        try:
            # 0700: tenants' volume names and journals are nobody else's (a power cut must
            # not lose the directory under its volumes: durable)
            durable.makedirs(self.data_dir, 0o700)
        except OSError as exc:
            raise ConfigError(f"data dir {self.data_dir} cannot be created: {exc}") from exc
        if not self.data_dir.is_dir():
            raise ConfigError(f"data dir {self.data_dir} is not a directory")
        fd = os.open(self.data_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"data dir {self.data_dir} is in use by another supervisor") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def _wait_for_old_kernels(self) -> None:
        """Kernels of a supervisor that was killed may still be flushing: never let two
        kernels hold one slot's files, so wait until none holds ``kernels.lock``."""
        fd = os.open(self.data_dir / KERNELS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + 2 * self.config.supervisor.shutdown_timeout + 5
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConfigError(f"kernels of an earlier supervisor still use "
                                          f"{self.data_dir}") from None
                    await asyncio.sleep(0.05)
        finally:
            os.close(fd)

    def _unlock_data_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- what the control API reports -----------------------------------------------------

    def cluster_map(self) -> dict[str, Any]:
        assert self.table is not None
        return {"epoch": self.table.epoch, "nslots": NSLOTS,
                "kernels": [h.describe() for h in self.kernels.values()],
                "slots": self.table.to_ranges()}

    async def cluster_status(self) -> dict[str, Any]:
        assert self.table is not None
        handles = list(self.kernels.values())
        stats = await asyncio.gather(
            *(h.call("kernel.stats", timeout=2.0) for h in handles), return_exceptions=True)
        counts = self.table.counts()
        rows = []
        for handle, stat in zip(handles, stats, strict=True):
            row = handle.describe()
            row.update(slots=counts.get(handle.kernel_id, 0), restarts=handle.restarts,
                       ops_per_s=self._ops.get(handle.kernel_id, (0, 0, 0.0))[2])
            if isinstance(stat, dict):
                row.update(stats=stat)
            else:
                row.update(error=str(stat))
            rows.append(row)
        return {"epoch": self.table.epoch, "pid": os.getpid(),
                "uptime": time.time() - self.started, "mode": self.config.farm.mode,
                "data_dir": str(self.data_dir), "kernels": rows,
                "migration": self.scaler.progress}


def print_ready(info: dict[str, Any]) -> None:
    """One JSON line on stdout when serving: scripts and tests wait for it."""
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()

