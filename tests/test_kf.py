"""``./kf``: what each command installs, and that serving prints nothing of the install.

The checkout's venv python is replaced by a script that records how it was called (and
talks like pip when asked to install), so the test runs in milliseconds and checks kf's
own decisions: which extras, when, and where the install's chatter goes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

KF = Path(__file__).resolve().parents[1] / "kf"


def checkout(tmp_path: Path, pip_fails: bool = False, accel_status: int = 3
             ) -> tuple[Path, Path]:
    """A checkout whose python records its calls; ``accel_status`` is what the
    accelerator's build answers (3: no C compiler, 0: built, 1: failed)."""
    root = tmp_path / "checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(KF, root / "kf")
    (root / "pyproject.toml").write_text("")
    calls = tmp_path / "calls"
    python = root / ".venv" / "bin" / "python"
    python.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
echo "$* | ${{KERNELFARM_ACCEL-}} ${{PYTHONPATH-}} ${{PYTHONSAFEPATH-}}" >> {calls}.env
case "$*" in
    *"pip install"*) echo "  Building editable for kernelfarm (pyproject.toml)"
                     echo "!! setuptools banner" >&2
                     {"exit 1" if pip_fails else ""} ;;
    *build_accel.py*) exit {accel_status} ;;
esac
""")
    python.chmod(0o755)
    return root, calls


def kf(root: Path, *args: str, accel: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KERNELFARM_ACCEL", "PYTHONPATH", "PYTHONSAFEPATH")}
    if accel:
        env["KERNELFARM_ACCEL"] = "1"
    return subprocess.run(["sh", str(root / "kf"), *args], capture_output=True, text=True,
                          timeout=30, env=env)


def runs(calls: Path) -> list[str]:
    """Each call other than an install: its arguments, then the accelerator's
    environment (``KERNELFARM_ACCEL PYTHONPATH PYTHONSAFEPATH``)."""
    lines = Path(f"{calls}.env").read_text().splitlines()
    return [line for line in lines if "pip install" not in line]


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
    assert installs(calls) == [f"{root}[test,bench,mount,accel]", f"{root}[bench]"]
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


def test_the_whole_suite_runs_pure_then_the_request_path_compiled(tmp_path: Path) -> None:
    root, calls = checkout(tmp_path, accel_status=0)
    result = kf(root, "test")
    assert result.returncode == 0, result.stderr
    assert runs(calls) == [
        "-m pytest |   ",
        f"{root}/tools/build_accel.py |   ",
        f"-m pytest tests/fs tests/rpc tests/kernel tests/net | 1 {root}/.accel 1",
    ]


def test_without_a_c_compiler_the_suite_runs_pure_and_passes(tmp_path: Path) -> None:
    root, calls = checkout(tmp_path, accel_status=3)
    assert kf(root, "test").returncode == 0
    assert runs(calls) == ["-m pytest |   ", f"{root}/tools/build_accel.py |   "]


def test_a_failed_accelerator_build_fails_the_test_command(tmp_path: Path) -> None:
    root, calls = checkout(tmp_path, accel_status=1)
    assert kf(root, "test").returncode == 1
    assert runs(calls)[-1] == f"{root}/tools/build_accel.py |   "


def test_targeted_tests_run_pure_unless_the_accelerator_is_asked_for(tmp_path: Path
                                                                     ) -> None:
    root, calls = checkout(tmp_path, accel_status=0)
    assert kf(root, "test", "tests/fs").returncode == 0
    assert kf(root, "test", "tests/fs", accel=True).returncode == 0
    assert runs(calls) == ["-m pytest tests/fs |   ", f"{root}/tools/build_accel.py | 1  ",
                           f"-m pytest tests/fs | 1 {root}/.accel 1"]


def test_serve_with_the_accelerator_installs_its_tools_and_runs_compiled(tmp_path: Path
                                                                        ) -> None:
    root, calls = checkout(tmp_path, accel_status=0)
    assert kf(root, "serve", accel=True).returncode == 0
    assert installs(calls) == [f"{root}[accel]"]
    assert runs(calls)[-1] == f"-m kernelfarm serve | 1 {root}/.accel 1"


def test_serve_with_the_accelerator_but_no_compiler_runs_pure(tmp_path: Path) -> None:
    root, calls = checkout(tmp_path, accel_status=3)
    assert kf(root, "serve", accel=True).returncode == 0
    assert runs(calls)[-1] == "-m kernelfarm serve |   "
