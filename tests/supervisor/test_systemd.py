"""``Type=notify``: the daemon tells systemd when it serves and when it stops."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from farmctl import become_subreaper, reap_orphans

from kernelfarm.supervisor import launch

UNIT = Path(__file__).resolve().parents[2] / "config" / "kernelfarm.service"


def test_ready_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    become_subreaper()
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(60)
        proc = launch.spawn(["--kernels", "2", "--data-dir", str(tmp_path / "d")],
                            log_path=tmp_path / "log", env={**os.environ,
                                                            "NOTIFY_SOCKET": path})
        try:
            ready = launch.wait_ready(proc, tmp_path / "log")
            message = notify.recv(4096).decode()
            assert message.startswith("READY=1\n")
            assert f"MAINPID={ready['pid']}" in message
            assert proc.poll() is None
            launch.stop(proc)
            assert notify.recv(4096) == b"STOPPING=1"
            assert proc.returncode == 0
        finally:
            launch.stop(proc)
            reap_orphans()


def test_an_abstract_notify_socket_works_too(tmp_path: Path) -> None:
    from kernelfarm.supervisor.notify import notify

    name = f"kernelfarm-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        os.environ["NOTIFY_SOCKET"] = "@" + name
        try:
            assert notify("READY=1")
        finally:
            del os.environ["NOTIFY_SOCKET"]
        assert sock.recv(100) == b"READY=1"
    assert not notify("READY=1")  # not under systemd: nothing to do


def test_the_unit_is_notify_with_a_dynamic_user_and_reads_its_config() -> None:
    unit = UNIT.read_text()
    for line in ("Type=notify", "DynamicUser=yes", "StateDirectory=kernelfarm",
                 "Environment=KERNELFARM_CONFIG=/etc/kernelfarm/kernelfarm.toml",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet="):
        assert f"\n{line}\n" in unit
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    exposure = float(result.stdout.rsplit("exposure level for", 1)[1].split(":")[1].split()[0])
    assert exposure < 2.0, result.stdout[-500:]
