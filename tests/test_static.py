"""The type checker and the linter, run by the test command (``./kf test``).

``mypy`` checks the whole package strictly (``[tool.mypy]`` in pyproject.toml) and ``ruff``
lints the package, the tests and the benchmarks (``[tool.ruff]``); both must report
nothing.  A ``type: ignore`` that remains must name its error code and say why.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOOLS / tool), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_mypy_strict_finds_nothing() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", "--no-cache", "kernelfarm", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]+\])?(?P<rest>.*)$")


def test_every_type_ignore_names_its_code_and_its_reason() -> None:
    bare = []
    for path in sorted((ROOT / "kernelfarm").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = IGNORE.search(line)
            if match and (not match["codes"] or not match["rest"].strip().startswith("#")):
                bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert bare == []
