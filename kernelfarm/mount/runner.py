"""Run a mount: connect to the farm, mount with libfuse, serve until unmounted or told to stop.

The process stops on SIGTERM/SIGINT (it sends its pending writes, then unmounts) and when
the file system is unmounted from outside (``fusermount3 -u``, ``kernelfarm umount``).
Without ``foreground`` it daemonizes as FUSE file systems do: the command returns once the
mount is in place (status 0) or has failed (status 1, with the reason on stderr).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Callable

import pyfuse3
import pyfuse3.asyncio
import uvloop

from kernelfarm import aio
from kernelfarm.heap import keep_freed_memory
from kernelfarm.mount.attrs import Caching
from kernelfarm.mount.fusefd import install as install_readiness
from kernelfarm.mount.operations import INFLIGHT_BYTES, FarmOperations
from kernelfarm.mount.readsize import widen_reads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountOptions:
    mountpoint: str
    control: tuple[str, int]
    read_only: bool = False
    caching: Caching = field(default_factory=Caching)
    token: str | None = field(default=None, repr=False)
    """Sent with auth.hello; ``None``: the client's default ($KERNELFARM_TOKEN, ...)."""


def fuse_options(options: MountOptions) -> set[str]:
    """libfuse mount options: the kernel checks permissions from the modes we report."""
    chosen = set(pyfuse3.default_options) | {"fsname=kernelfarm", "subtype=kernelfarm"}
    if options.read_only:
        chosen.add("ro")
    return chosen


async def serve(options: MountOptions, ready: Callable[[], None]) -> None:
    pyfuse3.asyncio.enable()
    readiness = install_readiness()
    client = aio.Client(options.control, token=options.token)
    await client.connect()  # no farm, no mount: fail before touching the mount point
    ops = FarmOperations(client.fs, read_only=options.read_only, caching=options.caching,
                         on_init=lambda: widen_reads(options.mountpoint))
    pyfuse3.init(ops, options.mountpoint, fuse_options(options))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, pyfuse3.terminate)
    try:
        ready()
        await pyfuse3.main()
    finally:
        if readiness is not None:
            readiness.stop()
        try:
            await ops.files.drain_all()
        except Exception as exc:
            log.error("writes not sent before unmounting: %s", exc)
        pyfuse3.close(unmount=True)
        await client.close()


def run(options: MountOptions, ready: Callable[[], None] = lambda: None) -> None:
    # Each 1 MiB FUSE write is a fresh ``bytes`` until the farm has it: without this, a
    # stream took 20-35k fresh pages per 256 MiB back from the host as it went.
    keep_freed_memory(INFLIGHT_BYTES)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(options, ready))


def run_daemon(options: MountOptions) -> int:
    """Fork; the child mounts and serves, the parent returns once the mount is ready."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            message = report.read().decode(errors="replace")
        if message == "ok":
            return 0
        os.waitpid(pid, 0)
        print(f"kernelfarm mount: {message or 'the mount process died'}", file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    status = 0

    def ready() -> None:
        os.write(write_end, b"ok")
        os.close(write_end)

    try:
        run(options, ready)
    except Exception as exc:
        try:
            os.write(write_end, str(exc).encode() or type(exc).__name__.encode())
        except OSError:
            pass  # the mount was up; the parent is gone
        status = 1
    os._exit(status)
