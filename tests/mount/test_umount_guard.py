"""`kernelfarm umount` unmounts kernelfarm mounts only: given the path of another file
system it refuses and leaves it mounted (as root, ``fusermount3 -u`` unmounts anything)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kernelfarm.mount.mtab import fs_type


def test_umount_leaves_a_file_system_that_is_not_a_kernelfarm_mount(tmp_path: Path) -> None:
    target = tmp_path / "tmpfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)],
                   check=True)
    try:
        (target / "kept").write_bytes(b"someone else's data")
        result = subprocess.run([sys.executable, "-m", "kernelfarm", "umount", str(target)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1, result.stderr
        assert "not a kernelfarm mount (tmpfs)" in result.stderr, result.stderr
        assert fs_type(target) == "tmpfs"
        assert (target / "kept").read_bytes() == b"someone else's data"
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)
