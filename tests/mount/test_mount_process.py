"""The mount as a process: it daemonizes, `kernelfarm umount` and SIGTERM unmount it cleanly
(SIGTERM after sending the writes still buffered), read-only refuses writes, and a mount
without a farm fails with a clear message instead of leaving a dead mount point."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from mountctl import Mount, mount_command, mounted, unmount_lazily

from farmctl import Farm, gone, reap, reap_orphans, wait_until
from kernelfarm.mount.mtab import is_mounted


def kernelfarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kernelfarm", *args], capture_output=True,
                          text=True, timeout=30)


def mount_processes(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "mount" in cmdline and str(path) in cmdline:
            found.append(proc)
    return found


def test_daemon_mode_and_the_umount_verb(farm: Farm, tmp_path: Path) -> None:
    path = tmp_path / "mp"
    path.mkdir()
    daemons: list[psutil.Process] = []
    try:
        result = subprocess.run(mount_command(farm, path), capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        assert is_mounted(path)          # mounted when the command returned
        daemons = mount_processes(path)
        assert len(daemons) == 1
        (path / "daemonvol").mkdir()
        (path / "daemonvol" / "f").write_bytes(b"via the daemon")
        result = kernelfarm("umount", str(path))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(path)
        wait_until(lambda: gone(daemons[0].pid), what="the mount daemon to exit")
        assert farm.client().fs.read_file("/daemonvol/f") == b"via the daemon"
        result = kernelfarm("umount", str(path))
        assert result.returncode == 1 and "not mounted" in result.stderr
    finally:
        for proc in daemons:
            if not gone(proc.pid):
                proc.kill()
        unmount_lazily(path)
        for proc in daemons:  # it called setsid: an orphan reap_orphans cannot tell
            wait_until(lambda: gone(proc.pid), what="the mount daemon to exit")
            reap(proc.pid)


def test_sigterm_sends_pending_writes_then_unmounts(farm: Farm, tmp_path: Path) -> None:
    with mounted(farm, tmp_path / "mp", name="term") as mount:
        (mount.path / "termvol").mkdir()
        fd = os.open(mount.path / "termvol" / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"buffered, not yet on the farm")  # under one chunk: held back
            mount.proc.send_signal(signal.SIGTERM)
            assert mount.proc.wait(timeout=30) == 0
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)  # ENOTCONN: the mount is gone, its data was sent before
        assert not is_mounted(mount.path)
    assert farm.client().fs.read_file("/termvol/f") == b"buffered, not yet on the farm"


def test_a_second_mount_on_the_same_point_is_refused(farm: Farm, tmp_path: Path) -> None:
    """Stacked mounts hid the first one, and `umount` then left the point mounted."""
    with mounted(farm, tmp_path / "mp", name="first") as mount:
        result = subprocess.run(mount_command(farm, mount.path), capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 1, result.stderr
        assert "already a kernelfarm mount" in result.stderr, result.stderr
        assert mount_processes(mount.path) == [psutil.Process(mount.proc.pid)]
        (mount.path / "stackvol").mkdir()  # the first mount still serves
    assert not is_mounted(mount.path)  # one unmount cleared it: nothing stacked


def test_read_only_mount_refuses_changes(farm: Farm, tmp_path: Path) -> None:
    fs = farm.client().fs
    fs.mkdir("/rovol")
    fs.write_file("/rovol/f", b"read me")
    with mounted(farm, tmp_path / "mp", "--read-only", name="ro") as mount:
        assert (mount.path / "rovol" / "f").read_bytes() == b"read me"
        for action in (lambda: (mount.path / "rovol" / "g").write_bytes(b"x"),
                       lambda: (mount.path / "rovol" / "d").mkdir(),
                       lambda: (mount.path / "rovol" / "f").unlink()):
            with pytest.raises(OSError) as raised:
                action()
            assert raised.value.errno == errno.EROFS
    assert fs.read_file("/rovol/f") == b"read me"


def test_no_farm_no_mount(tmp_path: Path) -> None:
    path = tmp_path / "mp"
    path.mkdir()
    result = subprocess.run([sys.executable, "-m", "kernelfarm", "mount", str(path),
                             "--control", "127.0.0.1:1"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1 and "kernelfarm mount:" in result.stderr
    assert not is_mounted(path)
    reap_orphans()


def test_a_crashed_mount_loses_nothing_closed(farm: Farm, tmp_path: Path) -> None:
    """kill -9 of the mount: closed files are on the farm, the mount point answers
    ENOTCONN until `kernelfarm umount` clears it, and a new mount serves the files."""
    with mounted(farm, tmp_path / "mp", name="killed") as mount:
        (mount.path / "crashvol").mkdir()
        (mount.path / "crashvol" / "f").write_bytes(b"closed before the crash")
        mount.proc.kill()
        mount.proc.wait(timeout=30)
        with pytest.raises(OSError) as raised:
            os.listdir(mount.path)
        assert raised.value.errno == errno.ENOTCONN
        result = kernelfarm("umount", str(mount.path))
        assert result.returncode == 0, result.stderr
    with mounted(farm, tmp_path / "mp", name="again") as mount:
        assert (mount.path / "crashvol" / "f").read_bytes() == b"closed before the crash"


def test_a_tenant_token_file_mounts_only_its_volumes(farm: Farm, tmp_path: Path) -> None:
    admin = farm.client()
    token = admin.control_call("tenant.add", "mounter", ["mnt-*"], [])["token"]
    admin.fs.mkdir("/mnt-a")
    admin.fs.mkdir("/not-mine")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    with mounted(farm, tmp_path / "mp", "--token-file", str(token_file), name="tenant") as mount:
        names = os.listdir(mount.path)
        assert "mnt-a" in names and "not-mine" not in names
        (mount.path / "mnt-a" / "f").write_bytes(b"the tenant's")
        (mount.path / "mnt-b").mkdir()                     # a volume its grants allow
        with pytest.raises(PermissionError):
            (mount.path / "other").mkdir()                  # one they do not: EACCES
        with pytest.raises(PermissionError):
            os.listdir(mount.path / "not-mine")
    assert admin.fs.read_file("/mnt-a/f") == b"the tenant's"


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[7])  # field 10, minflt


def test_the_mount_reuses_the_memory_of_answered_writes(mount: Mount) -> None:
    """A stream's 1 MiB writes are each a fresh ``bytes`` in the mount until the farm has
    them; the mount keeps what they freed (``kernelfarm.heap``), so a second stream takes
    (almost) no fresh page from the host.  With glibc's defaults (the call in
    ``runner.run`` left out) the second 48 MiB faulted in 8,000-9,300 pages, kept 0-1."""
    volume = mount.path / "heapvol"
    volume.mkdir()
    block = os.urandom(1 << 20)

    def stream() -> None:  # 6 files of 8 MiB (the test farm's max), 1 MiB writes
        for n in range(6):
            with open(volume / f"f{n}", "wb", buffering=0) as f:
                for _ in range(8):
                    f.write(block)
        for n in range(6):
            (volume / f"f{n}").unlink()

    stream()
    before = minor_faults(mount.proc.pid)
    stream()
    assert minor_faults(mount.proc.pid) - before < 1500
