"""A kernel's boot does not swallow the control call written right behind its boot
notification.

The supervisor writes the boot notification and then goes on with whatever it was doing:
when a kernel is restarted in the middle of a slot move, that is the move's next call
(``kernel.acquire``, which has no timeout).  Both can arrive in one read.  A boot that
dropped what came behind the notification left that call unanswered and the scale
waiting for ever (seen as a hung ``test_kill_9_of_a_kernel_mid_migration_loses_nothing``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import msgpack

from farmctl import wait_until
from kernelfarm.boot import BOOT_NOTIFICATION, BootInfo
from kernelfarm.config import Config
from kernelfarm.kernel.process import read_boot
from kernelfarm.partition import NSLOTS
from kernelfarm.rpc.protocol import make_unpacker

PING = msgpack.packb([0, 7, "kernel.ping", []])


def boot_info(data_dir: Path, listen: socket.socket) -> BootInfo:
    return BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                    addrs={0: list(listen.getsockname())}, config=Config.from_dict({}).to_dict(),
                    data_dir=str(data_dir), supervisor_pid=os.getpid())


def boot_bytes(info: BootInfo) -> bytes:
    data: bytes = msgpack.packb([2, BOOT_NOTIFICATION, [info.to_wire()]])
    return data


def test_read_boot_hands_back_what_came_behind_the_notification(tmp_path: Path) -> None:
    here, there = socket.socketpair()
    with here, there, socket.create_server(("127.0.0.1", 0)) as listen:
        info = boot_info(tmp_path, listen)
        here.sendall(boot_bytes(info) + PING)
        booted, early = read_boot(there, timeout=10)
    assert (booted.kernel_id, booted.data_dir, booted.addrs) == (0, info.data_dir, info.addrs)
    assert early == PING


def test_a_call_written_with_the_boot_notification_is_answered(tmp_path: Path) -> None:
    here, there = socket.socketpair()
    listen = socket.create_server(("127.0.0.1", 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelfarm.kernel", "--control-fd", str(there.fileno()),
         "--listen-fd", str(listen.fileno())],
        pass_fds=[there.fileno(), listen.fileno()], stdin=subprocess.DEVNULL)
    try:
        there.close()
        here.sendall(boot_bytes(boot_info(tmp_path / "data", listen)) + PING)
        here.settimeout(0.5)
        unpacker = make_unpacker(1 << 20)
        replies: list[object] = []

        def answered() -> bool:
            try:
                data = here.recv(65536)
            except socket.timeout:
                return False
            assert data, "the kernel hung up"
            unpacker.feed(data)
            replies.extend(unpacker)
            return any(isinstance(r, list) and r[:2] == [1, 7] for r in replies)

        wait_until(answered, timeout=30, what="the ping sent behind the boot to be answered")
        (reply,) = [r for r in replies if isinstance(r, list) and r[:2] == [1, 7]]
        assert reply[2] is None
    finally:
        here.close()   # the kernel stops when its control channel closes
        listen.close()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
