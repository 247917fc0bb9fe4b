"""The fuzzer's short run: generated structured, malformed and raw traffic against a real
kernel leaves it running (same pid, no restart) and drops no well-formed connection.
The long run is ``python tools/fuzz.py`` (1,000,000 cases by default)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kernelfarm import config as configuration
from kernelfarm.boot import BootInfo
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.partition import NSLOTS

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


@pytest.mark.asyncio
async def test_the_fuzzer_calls_every_method_a_kernel_serves(tmp_path: Path) -> None:
    """fs.statfs was left out of its list: a method added later is fuzzed too, or this
    fails (auth.hello aside: a wrong token on purpose costs up to 1 s per try)."""
    spec = importlib.util.spec_from_file_location("fuzz", FUZZ)
    assert spec is not None and spec.loader is not None
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    config = configuration.load()
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                    addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                    data_dir=str(tmp_path), supervisor_pid=0)
    kernel = Kernel(boot, config, asyncio.get_running_loop())
    try:
        assert set(fuzz.METHODS) == set(kernel.methods) - {"auth.hello"}
    finally:
        kernel.close()
