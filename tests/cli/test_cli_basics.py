"""The ``kernelfarm`` command as a new user meets it: errors, options, environment, status."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from farmctl import start_farm

import kernelfarm
import kernelfarm.aio
from kernelfarm.cli import main
from kernelfarm.cli.status import render
from kernelfarm.cli.top_cmd import Rates, p99, view
from rich.console import Console


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: usage errors, --help, --version
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def refused_port() -> int:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        return int(placeholder.getsockname()[1])  # closed again: nothing listens there


@pytest.mark.parametrize("bad", ["nonsense", ":7411", "127.0.0.1:", "127.0.0.1:99999"])
def test_a_bad_control_value_is_one_line_naming_it(capsys: pytest.CaptureFixture[str],
                                                   bad: str) -> None:
    for argv in (["status", "--control", bad], ["--control", bad, "fs", "ls"],
                 ["serve", "--control", bad]):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert "argument --control" in err and repr(bad) in err
        assert "Traceback" not in err


def test_a_token_file_that_is_not_one_is_one_line(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    """`--token-file /dev/zero` read without end (the command grew until killed)."""
    (tmp_path / "big").write_bytes(b"x" * 5000)
    for path, says in (("/dev/zero", "more than 4096 bytes"),
                       (str(tmp_path / "big"), "more than 4096 bytes"),
                       (str(tmp_path), "Is a directory")):
        code, _, err = run(capsys, "status", "--control", "127.0.0.1:1", "--token-file", path)
        assert code == 2 and err.startswith("kernelfarm: --token-file: ") and says in err, err


@pytest.mark.parametrize("bad", ["-1", "0", "nan", "inf", "soon"])
def test_a_refresh_interval_that_cannot_be_slept_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], bad: str) -> None:
    """-1, nan and inf reached time.sleep (a traceback after the first view); 0 polled
    every kernel of the farm without a pause."""
    for argv in (["top", "--interval", bad], ["status", "--watch", "--interval", bad]):
        code, _, err = run(capsys, *argv, "--control", f"127.0.0.1:{refused_port()}")
        assert code == 2 and "argument --interval" in err and "Traceback" not in err, err


def test_a_bogus_log_level_is_refused_before_anything_starts(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(capsys, "serve", "--log-level", "bogus")
    assert code == 2 and "invalid choice: 'BOGUS'" in err
    monkeypatch.setenv("KERNELFARM_LOG", "loud")
    code, _, err = run(capsys, "serve")
    assert code == 2 and "KERNELFARM_LOG='LOUD' is not a log level" in err


def test_connection_refused_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    port = refused_port()
    code, _, err = run(capsys, "status", "--control", f"127.0.0.1:{port}")
    assert code == 1
    assert err.strip() == f"kernelfarm: cannot connect to 127.0.0.1:{port}: Connection refused"
    with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
        kernelfarm.Client(f"127.0.0.1:{port}")

    async def connect() -> None:
        async with kernelfarm.aio.Client(f"127.0.0.1:{port}"):
            pass
    with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
        asyncio.run(connect())


def test_options_go_before_or_after_the_verb_and_come_from_the_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with start_farm(tmp_path, 1) as farm:
        c = farm.control_str
        assert run(capsys, "--control", c, "fs", "mkdir", "/a")[0] == 0
        assert run(capsys, "fs", "--control", c, "mkdir", "/b")[0] == 0
        assert run(capsys, "fs", "mkdir", "/c", "--control", c)[0] == 0
        monkeypatch.setenv("KERNELFARM_CONTROL", c)
        code, out, _ = run(capsys, "fs", "ls")
        assert (code, out.split()) == (0, ["a", "b", "c"])
        monkeypatch.delenv("KERNELFARM_CONTROL")
        config = tmp_path / "unit.toml"
        config.write_text(f'[farm]\ncontrol = "{c}"\n')
        monkeypatch.setenv("KERNELFARM_CONFIG", str(config))
        code, out, _ = run(capsys, "fs", "ls", "/")
        assert (code, out.split()) == (0, ["a", "b", "c"])
        monkeypatch.setenv("KERNELFARM_CONTROL", "nonsense")
        code, _, err = run(capsys, "fs", "ls")
        assert code != 0 and "$KERNELFARM_CONTROL: expected HOST:PORT, got 'nonsense'" in err


def test_version_and_help_for_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("kernelfarm ")
    parser = __import__("kernelfarm.cli", fromlist=["build_parser"]).build_parser()
    unhelped = []

    def walk(p: object, name: str) -> None:
        for action in p._actions:  # type: ignore[attr-defined]
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for verb, sub in action.choices.items():
                    walk(sub, f"{name} {verb}")
            elif not action.help and action.option_strings:
                unhelped.append(f"{name} {action.option_strings[0]}")

    walk(parser, "kernelfarm")
    assert unhelped == []


def test_locked_mode_with_several_kernels_is_refused_in_one_line(tmp_path: Path) -> None:
    """``serve --mode locked --kernels 3`` asks for what a locked farm cannot be: refused
    before anything starts (no data dir made), in one line; ``config --check`` agrees."""
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "kernelfarm", "serve", "--mode", "locked", "--kernels", "3",
         "--data-dir", str(data_dir), "--control", "127.0.0.1:0", "--metrics", "off"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "kernelfarm: <defaults>: farm.kernels = 3 does not apply in locked mode, which runs "
        "ONE kernel with farm.threads threads (use --threads 3, with --kernels 1 or auto)\n")
    assert not data_dir.exists()
    path = tmp_path / "locked.toml"
    path.write_text('[farm]\nmode = "locked"\nkernels = 2\n')
    code = main(["config", "--check", str(path)])
    assert code == 2
    for fine in ('[farm]\nmode = "locked"\nkernels = 1\n', '[farm]\nmode = "locked"\n'):
        path.write_text(fine)
        assert main(["config", "--check", str(path)]) == 0


def test_a_bare_kernelfarm_prints_usage() -> None:
    result = subprocess.run([sys.executable, "-m", "kernelfarm"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("usage: kernelfarm")


def test_status_and_top_fit_80_columns_and_show_addresses(tmp_path: Path) -> None:
    with start_farm(tmp_path, 2) as farm:
        client = farm.client()
        first = client.status()
        client.fs.mkdir("/v")
        for n in range(20):
            client.fs.write_file(f"/v/{n}", b"data")
        second = client.status()
    console = Console(width=80, record=True)
    console.print(render(second, 80))
    rates = Rates()
    rates.rows(first, 0.0)
    console.print(view(second, rates, 80, 1.0))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for kernel in second["kernels"]:
        assert f"{kernel['addr'][0]}:{kernel['addr'][1]}" in text
    assert " all " in text and "running" in text


def test_p99_is_the_bucket_holding_the_99th_percentile() -> None:
    bounds = [0.001, 0.01, 0.1]
    assert p99(bounds, [0, 0, 0, 0]) is None
    assert p99(bounds, [99, 1, 0, 0]) == 0.001
    assert p99(bounds, [98, 1, 1, 0]) == 0.01
    assert p99(bounds, [0, 0, 0, 5]) == float("inf")


def test_a_taken_metrics_port_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "kernelfarm", "serve", "--control",
                                 "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}",
                                 "--data-dir", str(tmp_path / "d")],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"kernelfarm: cannot serve metrics on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in result.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`kernelfarm fs cat F G | head -c 1`: no "Broken pipe" line per path and no
    exception at exit; the status a shell shows for `cat` killed by SIGPIPE."""
    with start_farm(tmp_path, 1) as farm:
        client = farm.client()
        client.fs.mkdir("/pipe")
        client.fs.write_file("/pipe/big", b"x" * (4 << 20))
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernelfarm", "fs", "cat", "/pipe/big", "/pipe/big",
             "--control", farm.control_str], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(1) == b"x"
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        assert proc.wait(timeout=60) == 141, err
        assert err == b"", err
