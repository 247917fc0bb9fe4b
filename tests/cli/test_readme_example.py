"""The README's quick start and Python example, run as a new user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from farmctl import start_farm

from kernelfarm.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def python_example() -> str:
    text = README.read_text()
    start = text.index("```python\n", text.index("From Python")) + len("```python\n")
    return text[start:text.index("```", start)]


def test_the_python_example_works_after_the_quick_start_and_again(tmp_path: Path) -> None:
    with start_farm(tmp_path, 2) as farm:
        control = farm.control_str
        assert main(["fs", "mkdir", "/alice", "--control", control]) == 0
        assert main(["fs", "put", str(README), "/alice/readme", "--control", control]) == 0
        code = python_example().replace("127.0.0.1:7400", control)
        for _ in range(2):
            result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert result.stdout.splitlines() == ["b'hello' ['alice']", "b'ping'"]
