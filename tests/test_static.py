"""The type checker and the linter, run by the test command (``./kf test``).

``mypy`` checks the whole package, ``tools/`` and the tests (the directories listed
in ``[tool.mypy]`` of pyproject.toml) strictly, and ``ruff`` lints the package, the
tools, the tests and the benchmarks (``[tool.ruff]``); both must report nothing.  A
``type: ignore`` that remains must name its error code and say why.

Both start when this module is collected, so they run on the spare core while the rest of
the suite waits on its servers, and do not add their time to the suite's; whatever
happens, they are reaped when the session ends.  Each runs under a shell that prints its
exit status last: until session 7 the suite's tests reaped any exited child
(:func:`farmctl.reap_orphans` ran ``waitpid(-1)``), and a tool reaped that way left
``Popen.returncode`` at 0 (Python's answer when the status is gone), so a lint error
passed in the full suite and failed alone.  The shell's word does not depend on who
reaps.
"""

from __future__ import annotations

import atexit
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(sys.executable).parent
TIMEOUT_S = 600


STATUS = "exit status of the tool: "


def start(tool: str, *args: str) -> subprocess.Popen[str]:
    command = f'"$@"; echo "{STATUS}$?"'
    process = subprocess.Popen(["/bin/sh", "-c", command, "sh", str(TOOLS / tool), *args],
                               cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    atexit.register(reap, process)
    return process


def reap(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate()


MYPY = start("mypy")
RUFF = start("ruff", "check", "--no-cache", "kernelfarm", "tools", "tests", "benchmarks")


def report(process: subprocess.Popen[str]) -> tuple[int, str]:
    """The tool's exit status, as its shell printed it, and its output."""
    output, _ = process.communicate(timeout=TIMEOUT_S)
    output, _, status = output.rpartition(STATUS)
    return int(status) if status.strip().isdigit() else -1, output


CONFTESTS = sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("tests/*/conftest.py"))
"""Each named ``conftest`` as ``tests/conftest.py`` is: one mypy run cannot hold two."""


def test_mypy_strict_finds_nothing() -> None:
    code, output = report(MYPY)
    assert code == 0, output
    for conftest in CONFTESTS:  # one by one, after the rest (its cache makes them quick)
        code, output = report(start("mypy", conftest))
        assert code == 0, output


def test_ruff_finds_nothing() -> None:
    code, output = report(RUFF)
    assert code == 0, output


IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]+\])?(?P<rest>.*)$")


def test_every_type_ignore_names_its_code_and_its_reason() -> None:
    bare = []
    for path in sorted([*(ROOT / "kernelfarm").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = IGNORE.search(line)
            if match and (not match["codes"] or not match["rest"].strip().startswith("#")):
                bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert bare == []
