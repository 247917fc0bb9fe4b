"""The systems under test, and how each is started, described and stopped.

Every farm is a real ``python -m kernelfarm serve`` process on 127.0.0.1 with its own
scratch data dir, started the way a user starts it, so the benchmark measures the
daemon people run (its supervisor, its pinning, its config) rather than a test double.
Each system yields a :class:`Target`: a blocking ``call`` for setting workloads up, the
address of the kernel that owns a tenant (requests go straight to their owner, as the
client library sends them), and the pids whose CPU the meter counts.

    partitioned        serve --kernels W                          W single-CPU kernels
    locked-global      serve --mode locked --threads W --locking global
    locked-fine        serve --mode locked --threads W --locking fine
    unicpu-locks       serve --mode locked --threads 1 --locking fine   (W = 1 only)
    inprocess-procs    no RPC: W processes, each its own FsSubsystem (see inprocess.py)
    inprocess-threads  no RPC: W threads sharing one FsSubsystem under fine locks
    echo               W bare msgpack-rpc echo servers (the floor; answers any method)

Whatever happens — a farm that fails to boot, an error mid-run, Ctrl-C — every process
started here is stopped and reaped before the ``with`` block is left.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelfarm.auth.tokens import TOKEN_ENV, admin_token_of
from kernelfarm.bench.echo import EchoProcess, echoed, running_echo
from kernelfarm.bench.loadgen import Address, Chain
from kernelfarm.bench.workloads import NEEDS_ECHO, Call
from kernelfarm.errors import KernelfarmError
from kernelfarm.partition import NSLOTS, SlotTable, key_slot
from kernelfarm.supervisor import launch

SYSTEMS = ("partitioned", "locked-global", "locked-fine", "unicpu-locks",
           "inprocess-procs", "inprocess-threads", "echo")
FARMS = frozenset({"partitioned", "locked-global", "locked-fine", "unicpu-locks"})
INPROCESS = frozenset({"inprocess-procs", "inprocess-threads"})
ONE_WORKER = frozenset({"unicpu-locks"})
"""Systems defined at one worker only (more would make them another system)."""
FSYNC_POLICIES = ("always", "batch", "never")



class SystemStartError(KernelfarmError):
    """A system under test could not be started (reported in the results, not fatal)."""

    code = "EBENCHSYS"


def skip_reason(system: str, workload: str, workers: int) -> str | None:
    """Why ``system`` does not run ``workload`` at ``workers`` workers, or None if it does."""
    if system in ONE_WORKER and workers != 1:
        return "defined at one worker only"
    if not workload.startswith("fs-") and system in INPROCESS:
        return "net workloads need a peer over RPC; the in-process runs call fs handlers only"
    return None


def serve_args(system: str, workers: int) -> list[str]:
    """The ``kernelfarm serve`` flags of a farm system at ``workers`` workers."""
    if system == "partitioned":
        return ["--kernels", str(workers)]
    if system in ("locked-global", "locked-fine"):
        return ["--mode", "locked", "--threads", str(workers),
                "--locking", system.removeprefix("locked-")]
    if system == "unicpu-locks":
        return ["--mode", "locked", "--threads", "1", "--locking", "fine"]
    raise ValueError(f"{system!r} is not a farm system")


def config_text(fsync: str) -> str:
    """The farm's config file: the fsync policy, auth off, and no bound on kernels.

    The load generator's connections send pre-encoded requests and no ``auth.hello``;
    auth costs once per connection, measured on its own by ``benchmarks/auth_bench.py``.
    ``--workers`` may ask for more kernels (or threads) than the default
    ``supervisor.max_kernels`` of four per core, which ``serve`` would refuse.
    """
    if fsync not in FSYNC_POLICIES:
        raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
    return (f'[auth]\nrequired = false\n[fs]\nfsync = "{fsync}"\n'
            f"[supervisor]\nmax_kernels = {NSLOTS}\n")


@dataclass
class Target:
    """A running RPC system: where tenants live, how to set up, whose CPU counts."""

    call: Call
    owner_of: Callable[[str], Address]
    addresses: list[Address]
    server_pids: list[int]
    details: dict[str, Any] = field(default_factory=dict)
    answer: Callable[[Chain], Chain] = lambda chain: chain
    """The chain with the results this system gives (the echo floor returns first params)."""
    cores: dict[Address, int] = field(default_factory=dict)
    """The core each server address is pinned to, where one is (a partitioned kernel's)."""

    def owners(self, tenants: Iterable[str]) -> dict[str, Address]:
        return {tenant: self.owner_of(tenant) for tenant in tenants}


def balanced_tenants(target: Target, per_server: int, prefix: str = "t") -> list[str]:
    """Tenant names chosen so that every server owns exactly ``per_server`` of them.

    Hash slots spread a handful of names unevenly; picking names until each kernel has
    its share keeps a partitioned farm from being measured with one kernel idle.
    """
    want = {address: per_server for address in target.addresses}
    chosen: list[str] = []
    index = 0
    limit = 1000 * per_server * len(want)
    while any(want.values()):
        if index > limit:
            raise SystemStartError("could not find tenants for every kernel")
        name = f"{prefix}{index:05d}"
        index += 1
        owner = target.owner_of(name)
        if want.get(owner, 0) > 0:
            want[owner] -= 1
            chosen.append(name)
    return chosen


# -- farms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedFarm:
    """A farm started by :func:`served_farm`: where its control API is, and its data dir
    (where its admin token is, for a client or ``kernelfarm mount --token-file``)."""

    control: tuple[str, int]
    data_dir: Path
    pid: int
    """The supervisor's; its children are the kernels."""
    kernels: int


@contextlib.contextmanager
def served_farm(scratch: Path, config: str, serve_flags: Sequence[str]) -> Iterator[ServedFarm]:
    """``kernelfarm serve`` with ``serve_flags`` and the config file text ``config``, on a
    fresh data dir under ``scratch``, logging only warnings (to ``scratch/serve.log``).

    How every benchmark starts a farm: the process is stopped and its kernels reaped when
    the ``with`` block is left, whatever happened; one that does not serve raises
    :class:`~kernelfarm.supervisor.launch.LaunchError` with the end of its log.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    config_path = scratch / "farm.toml"
    config_path.write_text(config)
    log_path = scratch / "serve.log"
    process = launch.spawn(
        ["--data-dir", str(scratch / "data"), "--config", str(config_path),
         "--log-level", "WARNING", *serve_flags],
        log_path=log_path, env=dict(os.environ, KERNELFARM_LOG="WARNING"))
    try:
        ready = launch.wait_ready(process, log_path)
        yield ServedFarm((ready["control"][0], int(ready["control"][1])), scratch / "data",
                         process.pid, len(ready["kernels"]))
    finally:
        launch.stop(process)


@contextlib.contextmanager
def running_farm(serve_flags: Sequence[str], scratch: Path, fsync: str) -> Iterator[Target]:
    """``kernelfarm serve`` with ``serve_flags`` on a fresh data dir under ``scratch``."""
    from kernelfarm.client import Client

    with contextlib.ExitStack() as stack:
        try:
            farm = stack.enter_context(served_farm(scratch, config_text(fsync), serve_flags))
        except launch.LaunchError as exc:
            raise SystemStartError(exc.message) from exc
        # Auth is off, but a client's hello must still be right: every client of this
        # run (scripts' worker processes too) finds this farm's admin token.
        token_before = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = admin_token_of(farm.data_dir)
        stack.callback(_restore_env, TOKEN_ENV, token_before)
        client = stack.enter_context(Client(farm.control))
        cluster = client.cluster_map()
        table = SlotTable.from_ranges(cluster["epoch"], cluster["slots"])
        addrs = {k["id"]: (k["addr"][0], int(k["addr"][1])) for k in cluster["kernels"]}
        # A locked kernel's threads share its cores: only a unicpu kernel has one.
        cores = {addrs[k["id"]]: int(k["core"]) for k in cluster["kernels"]
                 if "--mode" not in serve_flags and k.get("core") is not None}

        def owner_of(tenant: str) -> Address:
            return addrs[table.owner(key_slot(tenant))]

        yield Target(call=client.call, owner_of=owner_of,
                     addresses=sorted(set(addrs.values())), server_pids=[farm.pid],
                     details={"kernels": len(addrs), "serve": list(serve_flags),
                              "control": farm.control}, cores=cores)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def file_farm(scratch: Path, fsync: str, file_bytes: int, kernels: int) -> Iterator[ServedFarm]:
    """``kernelfarm serve`` sized for streaming files of ``file_bytes`` through it.

    Files up to twice that size, a volume quota for a few rounds of them, and no snapshot
    while the benchmark runs: a snapshot rewrites the whole volume, which is restart time,
    not throughput.  Auth stays on, as in a user's farm.
    """
    if fsync not in FSYNC_POLICIES:
        raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
    with served_farm(scratch, f'[fs]\nfsync = "{fsync}"\nmax_file_bytes = {file_bytes * 2}\n'
                              f"volume_quota_bytes = {file_bytes * 8}\n"
                              f"snapshot_journal_bytes = {file_bytes * 16}\n",
                     ["--kernels", str(kernels)]) as farm:
        yield farm


# -- the echo floor -----------------------------------------------------------------------


def _echo_call(method: str, *params: Any) -> Any:
    """Set-up against the floor: the echo answers every request with its first param."""
    return params[0] if params else None


@contextlib.contextmanager
def running_echo_floor(workers: int) -> Iterator[Target]:
    """``workers`` echo processes; tenants spread over them as over kernels."""
    with contextlib.ExitStack() as stack:
        echoes = [stack.enter_context(running_echo("msgpack")) for _ in range(workers)]
        addresses = [echo.address for echo in echoes]

        def owner_of(tenant: str) -> Address:
            return addresses[key_slot(tenant) % len(addresses)]

        yield Target(call=_echo_call, owner_of=owner_of, addresses=addresses,
                     server_pids=[echo.pid for echo in echoes],
                     details={"echo_servers": workers}, answer=echoed)


@contextlib.contextmanager
def running_system(system: str, workers: int, scratch: Path, fsync: str) -> Iterator[Target]:
    """Start an RPC ``system`` (a farm or the echo floor) for the ``with`` block."""
    if system == "echo":
        with running_echo_floor(workers) as target:
            yield target
    elif system in FARMS:
        with running_farm(serve_args(system, workers), scratch, fsync) as target:
            yield target
    else:
        raise ValueError(f"{system!r} is not served over RPC")


@contextlib.contextmanager
def byte_echo_if_needed(workloads: Iterable[str]) -> Iterator[EchoProcess | None]:
    """The host TCP peer of the net workloads, when any of them runs (its process too:
    it shares the cores with the servers and the load, and its CPU is metered)."""
    if not NEEDS_ECHO.intersection(workloads):
        yield None
        return
    with running_echo("bytes") as peer:
        yield peer
