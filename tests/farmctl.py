"""Start real farms for tests: ``kernelfarm serve`` as a process on 127.0.0.1, port 0.

The daemon prints one JSON line when it serves; tests wait for that line (with a deadline),
never for a fixed time.  Auth is on, as by default: every farm a test starts gets the test
session's admin token (:data:`ADMIN_TOKEN`, written to its data dir before the first serve
and exported as ``$KERNELFARM_TOKEN``), so clients and CLI commands find it as users do.
The test process makes itself a child subreaper, so kernels orphaned by a killed supervisor
are re-parented to it and reaped here: no test leaves a process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import msgpack
import psutil

import kernelfarm
from kernelfarm import durable
from kernelfarm.auth.tokens import ADMIN_TOKEN_FILE, TOKEN_ENV, new_token
from kernelfarm.partition import initial_assignment, key_slot, rebalance_plan
from kernelfarm.supervisor import launch

DEADLINE = 30.0
ADMIN_TOKEN = new_token()
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def wait_until(predicate: Callable[[], Any], timeout: float = DEADLINE,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def loaded(seconds: float) -> float:
    """``seconds`` of a quiet machine, stretched by how busy this one is now.

    A process gets about cores / load of a core (a pinned kernel, of its own core), so
    work that takes a known time on a quiet machine -- starting a farm or a mount,
    loading a journal -- takes load / cores times as long at that load: at load 28 on
    two cores, fourteen times.  For waits on such work, not on an event that may never
    come, so that a test fails for what it checks rather than for the machine's load.
    """
    cores = len(os.sched_getaffinity(0)) or 1
    return seconds * max(1.0, os.getloadavg()[0] / cores)


def contention(core: int, cpu_s: float = 0.1) -> float:
    """How many times longer CPU-bound work takes on ``core`` now than on an idle core (at
    least 1): the wall time of a busy loop pinned there over the CPU time it got.

    For deadlines a test sets for its farm, which must stretch as the farm's work does and
    no more (the load average counts every runnable process, not the core a pinned kernel
    waits for): a test whose point is that some work outlasts a deadline keeps it.
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        wall, cpu = time.monotonic(), time.thread_time()
        while time.thread_time() - cpu < cpu_s:
            pass
        return max(1.0, (time.monotonic() - wall) / (time.thread_time() - cpu))
    finally:
        os.sched_setaffinity(0, before)


def reap_orphans() -> None:
    """Collect the exited processes re-parented to us (kernels of a killed supervisor),
    and nothing else.

    A child the test process started itself has someone to wait for it (a ``Popen``, a
    snapshotter or syncer running in the test process): reaping it here would leave its
    waiter a made-up status (``Popen.returncode`` 0 for a tool that failed).  Which is
    which: a process we fork stays in our process group or leads one of its own (a farm
    started by :func:`spawn_serve` leads one, which its kernels join), so an exited
    child in a group led by another process was born below one of our children, and is
    ours only because we are a subreaper.  An orphan that leads its own group (a daemon
    that called ``setsid``) is reaped by pid (:func:`reap`)."""
    own_group = os.getpgrp()
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            group = os.getpgid(child.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
        if group not in (own_group, child.pid):
            reap(child.pid)


def reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of ours (a re-parented daemon)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def gone(pid: int) -> bool:
    """The process has exited (a zombie of ours counts: it is reaped here)."""
    reap_orphans()
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class Farm:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    ready: dict[str, Any]
    clients: list[Any] = field(default_factory=list)

    @property
    def control(self) -> tuple[str, int]:
        host, port = self.ready["control"]
        return host, port

    @property
    def control_str(self) -> str:
        return f"{self.control[0]}:{self.control[1]}"

    def client(self, **kwargs: Any) -> kernelfarm.Client:
        client = kernelfarm.Client(self.control, **kwargs)
        self.clients.append(client)
        return client

    def cluster_map(self) -> dict[str, Any]:
        cluster: dict[str, Any] = raw_call(self.control, "cluster.map")
        return cluster

    def kernel_pids(self) -> list[int]:
        return [k["pid"] for k in self.cluster_map()["kernels"]]

    def kernel_procs(self) -> list[psutil.Process]:
        """Every live kernel process of this farm (children of the supervisor)."""
        try:
            return [p for p in psutil.Process(self.proc.pid).children()
                    if "kernelfarm.kernel" in " ".join(p.cmdline())]
        except psutil.NoSuchProcess:
            return []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def moving_namespace(prefix: str = "mover") -> str:
    """A namespace (and volume) name whose slot goes to the new kernel when one kernel
    becomes two, and back when two become one."""
    moved = {move.slot for move in rebalance_plan(initial_assignment([0]), [0, 1])}
    return next(name for name in (f"{prefix}-{i}" for i in range(1000))
                if key_slot(name) in moved)


def raw_call(addr: tuple[str, int], method: str, *params: Any, timeout: float = 10.0,
             token: str | None = ADMIN_TOKEN) -> Any:
    """One msgpack-rpc call with a plain socket: not the project's client.  With a
    ``token``, ``auth.hello`` goes first on the same connection."""
    import socket

    with socket.create_connection(addr, timeout=timeout) as sock:
        hello = msgpack.packb([0, 0, "auth.hello", [token]]) if token is not None else b""
        sock.sendall(hello + msgpack.packb([0, 1, method, list(params)]))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the reply")
            unpacker.feed(data)
            for msg in unpacker:
                assert msg[0] == 1 and msg[1] in (0, 1), msg
                if msg[2] is not None:
                    raise RuntimeError(msg[2])
                if msg[1] == 1:
                    return msg[3]


def give_admin_token(data_dir: Path) -> None:
    """The test session's admin token for a farm's data dir, before its first serve."""
    os.environ[TOKEN_ENV] = ADMIN_TOKEN
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / ADMIN_TOKEN_FILE).exists():
        durable.write_file(data_dir / ADMIN_TOKEN_FILE, f"{ADMIN_TOKEN}\n".encode())


def spawn_serve(tmp_path: Path, *args: str, config_text: str | None = None,
                data_dir: Path | None = None, name: str = "farm",
                entry: Sequence[str] = ("-m", "kernelfarm")
                ) -> tuple[subprocess.Popen[bytes], Path, Path]:
    data_dir = data_dir or tmp_path / f"{name}-data"
    give_admin_token(data_dir)
    log_path = tmp_path / f"{name}.log"
    serve_args = ["--data-dir", str(data_dir), *args]
    if config_text is not None:
        config_path = tmp_path / f"{name}.toml"
        config_path.write_text(config_text)
        serve_args += ["--config", str(config_path)]
    # A group of its own: what it leaves behind is known as an orphan (reap_orphans).
    proc = launch.spawn(serve_args, log_path=log_path, entry=entry, process_group=0)
    return proc, data_dir, log_path


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 15.0) -> int:
    return launch.stop(proc, sig, timeout)


@contextlib.contextmanager
def start_farm(tmp_path: Path, kernels: int | str = 2, *args: str,
               config_text: str | None = None, data_dir: Path | None = None,
               name: str = "farm", entry: Sequence[str] = ("-m", "kernelfarm"),
               ready_s: float = DEADLINE) -> Iterator[Farm]:
    """Run ``kernelfarm serve`` until the block ends; then stop it and reap everything.
    ``entry``: see :func:`kernelfarm.supervisor.launch.spawn`; ``ready_s``: how long it
    may take to serve on a quiet machine (:func:`loaded` stretches it on a busy one)."""
    become_subreaper()
    proc, data_dir, log_path = spawn_serve(tmp_path, "--kernels", str(kernels), *args,
                                           config_text=config_text, data_dir=data_dir,
                                           name=name, entry=entry)
    farm = None
    try:
        farm = Farm(proc, data_dir, log_path,
                    launch.wait_ready(proc, log_path, loaded(ready_s)))
        yield farm
    finally:
        for client in farm.clients if farm is not None else []:
            client.close()
        stop_process(proc)
        reap_orphans()  # kernels of a supervisor the test killed were re-parented to us
