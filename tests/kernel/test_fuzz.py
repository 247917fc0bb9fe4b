"""The fuzzer's short run: generated structured, malformed and raw traffic against a real
kernel leaves it running (same pid, no restart) and drops no well-formed connection.
The long run is ``python tools/fuzz.py`` (1,000,000 cases by default)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[2] / "tools" / "fuzz.py"


def test_a_short_fuzz_run_finds_no_crash_restart_or_drop() -> None:
    result = subprocess.run(
        [sys.executable, str(FUZZ), "--cases", "4000", "--seed", "11", "--json", "--quiet"],
        capture_output=True, text=True, timeout=300)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["crashes"], summary["restarts"], summary["dropped"]) == (0, 0, 0), \
        (summary, result.stderr[-2000:])
    assert summary["cases"] == 4000 and summary["raw"] > 0 and summary["malformed"] > 0
    assert result.returncode == 0
