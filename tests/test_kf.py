"""``./kf``: what each command installs, and that serving prints nothing of the install.

The checkout's venv python is replaced by a script that records how it was called (and
talks like pip when asked to install), so the test runs in milliseconds and checks kf's
own decisions: which extras, when, and where the install's chatter goes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

KF = Path(__file__).resolve().parents[1] / "kf"


def checkout(tmp_path: Path, pip_fails: bool = False) -> tuple[Path, Path]:
    root = tmp_path / "checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(KF, root / "kf")
    (root / "pyproject.toml").write_text("")
    calls = tmp_path / "calls"
    python = root / ".venv" / "bin" / "python"
    python.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$*" in
    *"pip install"*) echo "  Building editable for kernelfarm (pyproject.toml)"
                     echo "!! setuptools banner" >&2
                     {"exit 1" if pip_fails else ""} ;;
esac
""")
    python.chmod(0o755)
    return root, calls


def kf(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(root / "kf"), *args], capture_output=True, text=True,
                          timeout=30)


def installs(calls: Path) -> list[str]:
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line.split(" -e ", 1)[1] for line in lines if " -e " in line]


def test_serve_installs_only_what_serving_needs_and_prints_none_of_it(tmp_path: Path
                                                                      ) -> None:
    root, calls = checkout(tmp_path)
    result = kf(root, "serve", "--kernels", "1")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert installs(calls) == [str(root)]
    assert calls.read_text().splitlines()[-1] == "-m kernelfarm serve --kernels 1"
    assert "setuptools banner" in (root / ".venv" / "install.log").read_text()
    kf(root, "serve")
    assert installs(calls) == [str(root)]  # installed once


def test_test_and_bench_add_their_extras(tmp_path: Path) -> None:
    root, calls = checkout(tmp_path)
    assert kf(root, "test", "-q").returncode == 0
    assert kf(root, "bench", "--quick").returncode == 0
    assert installs(calls) == [f"{root}[test,bench,mount]", f"{root}[bench]"]
    assert calls.read_text().splitlines()[-1] == "-m kernelfarm bench --quick"


def test_a_bare_kf_prints_usage_instead_of_serving(tmp_path: Path) -> None:
    root, calls = checkout(tmp_path)
    result = kf(root)
    assert result.returncode == 2 and "./kf serve" in result.stderr
    assert not calls.exists()


def test_a_failed_install_shows_its_log(tmp_path: Path) -> None:
    root, _ = checkout(tmp_path, pip_fails=True)
    result = kf(root, "serve")
    assert result.returncode == 1
    assert "kf: installing kernelfarm into" in result.stderr
    assert "setuptools banner" in result.stderr
