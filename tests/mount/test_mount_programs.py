"""Unmodified programs on the mount give the same results as on a local directory.

Each scenario runs the same shell script in a local directory and in a directory of the
mount, and the two outputs must be equal (git with fixed dates even gives equal commit
hashes).  Then what the mount adds of its own: volumes at the top, errnos for what the
farm does not support, statfs, write-behind errors, and an open file that is unlinked.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from pathlib import Path

import pytest
from mountctl import Mount

from farmctl import Farm, wait_until
from kernelfarm.mount.mtab import device_of
from kernelfarm.mount.readsize import READ_AHEAD_KIB

GIT_ENV = {"GIT_AUTHOR_NAME": "kf", "GIT_AUTHOR_EMAIL": "kf@example.invalid",
           "GIT_COMMITTER_NAME": "kf", "GIT_COMMITTER_EMAIL": "kf@example.invalid",
           "GIT_AUTHOR_DATE": "2024-01-02T03:04:05Z",
           "GIT_COMMITTER_DATE": "2024-01-02T03:04:05Z", "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": "/nonexistent"}

LISTING = ("find . -mindepth 1 \\( -type d -printf '%P %y %m\\n' \\) -o "
           "\\( -printf '%P %y %m %s %T@ %l\\n' \\) | LC_ALL=C sort")
"""Every name with its type and mode; files and links with size, mtime and target."""


def run(script: str, cwd: Path, src: Path) -> str:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                            env={**os.environ, **GIT_ENV, "SRC": str(src)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"in {cwd}: {result.stderr}"
    return result.stdout


def same_on_both(script: str, mount: Mount, tmp_path: Path, src: Path, name: str) -> str:
    local = tmp_path / "local"
    local.mkdir()
    remote = mount.path / "progs" / name
    remote.mkdir(parents=True)
    expected = run(script, local, src)
    assert run(script, remote, src) == expected
    return expected


def test_cp_a_then_diff_r(mount: Mount, tmp_path: Path, source_tree: Path) -> None:
    out = same_on_both(f'cp -a "$SRC" tree && diff -r "$SRC" tree && cd tree && {LISTING}',
                       mount, tmp_path, source_tree, "cp")
    assert "mount/operations.py f 600" in out and "a link l 777" in out


def test_tar_round_trip(mount: Mount, tmp_path: Path, source_tree: Path) -> None:
    same_on_both('tar cf t.tar -C "$SRC" . && mkdir x && tar xf t.tar -C x && '
                 'diff -r "$SRC" x && tar cf - -C x . | tar tvf - | LC_ALL=C sort',
                 mount, tmp_path, source_tree, "tar")


def test_git_init_add_commit_log_status(mount: Mount, tmp_path: Path,
                                        source_tree: Path) -> None:
    out = same_on_both(
        'git init -q -b main r && cp -a "$SRC"/. r/ && cd r && git add -A && '
        'git commit -qm first && echo change >> mount/attrs.py && git status --porcelain && '
        'git commit -qam second && git log --format="%H %s" && git status --porcelain && '
        'git fsck --strict 2>&1', mount, tmp_path, source_tree, "git")
    assert " second\n" in out and " first\n" in out


def test_sqlite3_creates_and_queries(mount: Mount, tmp_path: Path, source_tree: Path
                                     ) -> None:
    out = same_on_both(
        "sqlite3 db 'create table t(k integer primary key, v text);"
        " with recursive n(i) as (select 1 union all select i+1 from n where i < 5000)"
        " insert into t select i, printf(\"value %d\", i) from n;"
        " create index tv on t(v); delete from t where k % 3 = 0;"
        " select count(*), sum(k), max(v) from t; pragma integrity_check;'",
        mount, tmp_path, source_tree, "sqlite")
    assert out.splitlines()[-1] == "ok"


def test_rsync_a(mount: Mount, tmp_path: Path, source_tree: Path) -> None:
    out = same_on_both(
        f'rsync -a "$SRC"/ copy/ && diff -r "$SRC" copy && '
        f'rsync -ai "$SRC"/ copy/ && echo again && cd copy && {LISTING}',
        mount, tmp_path, source_tree, "rsync")
    assert out.startswith("again\n")  # the second rsync found nothing to change


def test_fio_verify(mount: Mount, tmp_path: Path, source_tree: Path) -> None:
    same_on_both("fio --name=verify --filename=data --size=4M --bs=64k --rw=randwrite "
                 "--ioengine=psync --verify=crc32c --do_verify=1 --minimal "
                 "--output=fio.out && cut -d';' -f5,13 fio.out",  # error code, KB written
                 mount, tmp_path, source_tree, "fio")


def test_everyday_shell_commands(mount: Mount, tmp_path: Path, source_tree: Path) -> None:
    same_on_both(
        'mkdir -p a/b/c && echo one > a/f && mv a/f a/b/g && ln -s b/g a/link && '
        'chmod 640 a/b/g && chmod 711 a/b && '
        'truncate -s 5000 a/b/g && truncate -s 2 a/b/g && mv a/b/c a/c2 && cat a/link && '
        'touch -d "2021-02-03 04:05:06" a/b/g && find a -name "g*" && du -ab a/b/g && '
        'stat -c "%n %s %a %F" a/b/g a/link && stat -c "%n %a %F" a/c2 && stat -c %Y a/b/g && '
        "find a | LC_ALL=C sort", mount, tmp_path, source_tree, "shell")


def test_the_top_level_is_the_volumes(farm: Farm, mount: Mount) -> None:
    fs = farm.client().fs
    (mount.path / "newvol").mkdir()
    assert "newvol" in fs.listdir("/")
    fs.mkdir("/made-by-client")
    assert "made-by-client" in os.listdir(mount.path)
    with pytest.raises(PermissionError):
        (mount.path / "not-a-volume").write_bytes(b"x")
    (mount.path / "newvol" / "f").write_bytes(b"x")
    with pytest.raises(OSError) as raised:
        (mount.path / "newvol").rmdir()
    assert raised.value.errno == errno.ENOTEMPTY
    (mount.path / "newvol" / "f").unlink()
    (mount.path / "newvol").rmdir()
    assert "newvol" not in fs.listdir("/")


def _renameat2(src: Path, dst: Path, flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return 0
    return ctypes.get_errno()


def test_unsupported_features_answer_their_errno(mount: Mount) -> None:
    d = mount.path / "unsupported"
    d.mkdir()
    (d / "f").write_bytes(b"x")
    (d / "g").write_bytes(b"y")

    def errno_of(action: object) -> int:
        try:
            action()  # type: ignore[operator]
        except OSError as exc:
            return exc.errno or 0
        return 0

    assert errno_of(lambda: os.link(d / "f", d / "hard")) == errno.EPERM
    assert errno_of(lambda: os.mkfifo(d / "fifo")) == errno.EPERM
    assert errno_of(lambda: os.mknod(d / "dev", 0o600 | 0o020000, os.makedev(1, 3))) \
        == errno.EPERM
    assert errno_of(lambda: os.setxattr(d / "f", "user.k", b"v")) == errno.ENOTSUP
    assert errno_of(lambda: os.getxattr(d / "f", "user.k")) == errno.ENOTSUP
    assert errno_of(lambda: os.chown(d / "f", 1234, -1)) == errno.EPERM
    assert errno_of(lambda: os.chown(d / "f", os.getuid(), os.getgid())) == 0
    assert _renameat2(d / "f", d / "g", 2) == errno.EINVAL       # RENAME_EXCHANGE
    assert _renameat2(d / "f", d / "g", 1) == errno.EEXIST       # RENAME_NOREPLACE
    assert _renameat2(d / "f", d / "h", 1) == 0
    assert (d / "h").read_bytes() == b"x"


def test_statfs_counts_the_volume_quota(farm: Farm, mount: Mount) -> None:
    (mount.path / "quota").mkdir()
    (mount.path / "quota" / "f").write_bytes(b"z" * 1_048_576)
    st = os.statvfs(mount.path)
    farm_wide = farm.client().fs.statfs("/")
    assert st.f_blocks * st.f_frsize == 268435456 * farm_wide["volumes"]
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert used == farm_wide["bytes_used"] // 4096 * 4096 >= 1_048_576


def test_close_and_fsync_put_the_data_on_the_farm(farm: Farm, mount: Mount) -> None:
    fs = farm.client().fs
    (mount.path / "dur").mkdir()
    with open(mount.path / "dur" / "synced", "wb") as f:
        f.write(b"a" * 100_000)
        f.flush()                      # out of Python's buffer, into the mount's
        os.fsync(f.fileno())
        assert fs.read_file("/dur/synced") == b"a" * 100_000  # before close
    with open(mount.path / "dur" / "closed", "wb") as f:
        f.write(b"b" * 3_000_000)
    assert fs.read_file("/dur/closed") == b"b" * 3_000_000


def test_a_failed_write_behind_is_reported(mount: Mount) -> None:
    (mount.path / "big").mkdir()
    with pytest.raises(OSError) as raised:
        with open(mount.path / "big" / "f", "wb") as f:
            for _ in range(9):
                f.write(b"x" * 1_048_576)   # past max_file_bytes = 8 MiB
    assert raised.value.errno == errno.EFBIG


def test_an_unlinked_open_file_stays_readable(farm: Farm, mount: Mount) -> None:
    d = mount.path / "unlinked"
    d.mkdir()
    (d / "f").write_bytes(b"still here")
    with open(d / "f", "rb") as f:
        (d / "f").unlink()
        assert not (d / "f").exists()
        assert f.read() == b"still here"
    assert os.listdir(d) == [] and farm.client().fs.listdir("/unlinked") == []


def test_read_ahead_never_serves_what_this_mount_overwrote(mount: Mount) -> None:
    """Reading in order fetches blocks ahead; a write must make them stale at once."""
    d = mount.path / "ahead"
    d.mkdir()
    (d / "f").write_bytes(b"a" * 4_000_000)
    with open(d / "f", "r+b", buffering=0) as f:
        assert f.read(131072) == b"a" * 131072       # sequential: blocks 0..4 on their way
        assert f.read(131072) == b"a" * 131072
        f.seek(2_500_000)
        f.write(b"b" * 1000)                          # inside a block already fetched
        f.seek(262144)
        rest = f.read(4_000_000)
    assert rest[2_500_000 - 262144:][:1000] == b"b" * 1000
    assert rest.count(b"b") == 1000


def test_the_kernel_reads_the_mount_a_mib_at_a_time(mount: Mount) -> None:
    """The mount raises its read-ahead window from the kernel's 128 KiB to 1 MiB once the
    kernel's INIT is answered (which would lower it again), so a sequential read is one
    FUSE request per MiB instead of eight."""
    dev = os.stat(mount.path).st_dev
    device = f"{os.major(dev)}:{os.minor(dev)}"
    assert device_of(mount.path) == device
    knob = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    wait_until(lambda: knob.read_text().strip() == str(READ_AHEAD_KIB),
               what="the mount's read-ahead window to be 1 MiB")
    (mount.path / "wide").mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 5)
    (mount.path / "wide" / "f").write_bytes(payload)
    assert (mount.path / "wide" / "f").read_bytes() == payload
