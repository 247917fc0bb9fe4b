"""``tools/build_accel.py``: without a working C compiler the accelerator is skipped, not
failed, so such a machine installs and tests the pure path (``./kf test`` passes there).

The compiled build itself is exercised by ``./kf test``'s compiled pass, which builds it
and runs the request path's tests on it (``tests/kernel/test_accel.py`` checks that the
kernels then load the compiled modules).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "build_accel.py"
SKIPPED = 3


def build(tmp_path: Path, cc: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), "--target", str(tmp_path / "accel")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CC": cc})


def test_a_compiler_that_fails_skips_the_build_and_leaves_nothing(tmp_path: Path) -> None:
    result = build(tmp_path, "/bin/false")
    assert result.returncode == SKIPPED, result.stderr
    assert result.stderr.startswith("accel: skipped, the pure-Python path runs: "
                                    "the C compiler '/bin/false' failed")
    assert list(tmp_path.iterdir()) == []


def test_no_compiler_at_all_skips_the_build_and_leaves_nothing(tmp_path: Path) -> None:
    result = build(tmp_path, str(tmp_path / "no-such-cc"))
    assert result.returncode == SKIPPED, result.stderr
    assert "accel: skipped, the pure-Python path runs: cannot run the C compiler" \
        in result.stderr
    assert list(tmp_path.iterdir()) == []
