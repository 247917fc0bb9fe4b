"""``kernelfarm config --check``: every error of a file at once, each naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernelfarm.cli import main


def check(capsys: pytest.CaptureFixture[str], *paths: Path) -> tuple[int, str, str]:
    code = main(["config", "--check", *map(str, paths)])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_error_is_reported_with_suggestions_and_toml_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[farm]\ncontrl = "127.0.0.1:1"\nkernels = true\nhost = "example.com"\n'
                    'mode = "lockd"\n[rpc]\nmax_inflight = -1\n[metrcs]\nlisten = "x"\n')
    code, out, err = check(capsys, path)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines == [
        f"kernelfarm config: {path}: unknown section metrcs (did you mean metrics?)",
        f"kernelfarm config: {path}: unknown key farm.contrl (did you mean farm.control?)",
        f'kernelfarm config: {path}: farm.kernels must be an integer or a string, got true',
        f'kernelfarm config: {path}: farm.host must be a numeric IP address (a kernel '
        f'resolves no names), got "example.com"',
        f'kernelfarm config: {path}: farm.mode must be "partitioned" or "locked", got '
        f'"lockd"',
        f"kernelfarm config: {path}: rpc.max_inflight must be >= 1, got -1",
    ]


def test_good_files_are_ok_and_a_missing_one_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[farm]\nhost = "::1"\n[metrics]\nenabled = false\n')
    missing = tmp_path / "missing.toml"
    code, out, err = check(capsys, good, missing)
    assert code == 2
    assert out == f"{good}: ok\n"
    assert err == f"kernelfarm config: config file not found: {missing}\n"


def test_serve_refuses_a_host_name_at_check_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "name.toml"
    path.write_text('[farm]\nhost = "localhost"\n')
    assert main(["serve", "--config", str(path), "--data-dir", str(tmp_path / "d")]) == 2
    assert "farm.host must be a numeric IP address" in capsys.readouterr().err
