"""``kernelfarm fs ...`` handlers, against an in-process fs subsystem standing in for a farm
(the command's own code is what is tested: parsing, chunking, output, errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fs_harness import FakeKernel

from kernelfarm.cli import fs_cmd, main


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    kernel = FakeKernel(tmp_path / "data", max_file_bytes=64 * 1024 * 1024)
    seen: list[Any] = []

    class FakeClient:
        def __init__(self, control: Any) -> None:
            seen.append(control)
            self.fs = kernel.api

        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

    monkeypatch.setattr(fs_cmd, "Client", FakeClient)
    kernel.controls = seen  # type: ignore[attr-defined]
    yield kernel
    kernel.close()


def fs(*argv: str) -> int:
    return main(["fs", argv[0], "--control", "127.0.0.1:7999", *argv[1:]])


def test_mkdir_put_ls_cat_get_roundtrip(kernel: FakeKernel, tmp_path: Path,
                                        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert fs("mkdir", "-p", "/vol/a/b") == 0
    assert kernel.controls == [("127.0.0.1", 7999)]  # type: ignore[attr-defined]
    local = tmp_path / "in.bin"
    local.write_bytes(b"hello\n")
    assert fs("put", str(local), "/vol/a/b/f") == 0
    capsysbinary.readouterr()
    assert fs("ls", "/") == 0 and capsysbinary.readouterr().out == b"vol\n"
    assert fs("ls", "-l", "/vol/a/b") == 0
    assert capsysbinary.readouterr().out.split() == [b"file", b"100644", b"6", b"f"]
    assert fs("cat", "/vol/a/b/f", "/vol/a/b/f") == 0
    assert capsysbinary.readouterr().out == b"hello\nhello\n"
    out = tmp_path / "out.bin"
    assert fs("get", "/vol/a/b/f", str(out)) == 0 and out.read_bytes() == b"hello\n"
    assert fs("stat", "/vol/a/b/f") == 0
    assert b"type=file size=6 mode=100644" in capsysbinary.readouterr().out


def test_put_and_get_of_a_file_larger_than_one_chunk(kernel: FakeKernel, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs_cmd, "CHUNK", 1000)
    data = bytes(range(256)) * 20  # 5120 bytes: six chunks
    local = tmp_path / "big"
    local.write_bytes(data)
    kernel.api.mkdir("/v")
    kernel.api.write_file("/v/big", b"old")
    assert fs("put", str(local), "/v/big") == 0
    assert kernel.api.read_file("/v/big") == data
    assert kernel.api.listdir("/v") == ["big"]  # the temporary was renamed over it
    out = tmp_path / "back"
    assert fs("get", "/v/big", str(out)) == 0 and out.read_bytes() == data


def test_mv_rm_rmdir(kernel: FakeKernel) -> None:
    kernel.api.mkdir("/v")
    kernel.api.mkdir("/v/d")
    kernel.api.mkdir("/v/d/e")
    kernel.api.write_file("/v/d/e/f", b"1")
    kernel.api.write_file("/v/g", b"2")
    assert fs("mv", "/v/g", "/v/h") == 0
    assert fs("rm", "/v/h") == 0
    assert fs("rm", "-r", "/v/d") == 0
    assert kernel.api.listdir("/v") == []
    assert fs("rmdir", "/v") == 0
    assert kernel.api.listdir("/") == []


def test_errors_are_one_line_on_stderr_and_status_1(
        kernel: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    kernel.api.mkdir("/v")
    assert fs("cat", "/v/missing") == 1
    err = capsys.readouterr().err
    assert err == "kernelfarm fs cat: No such file or directory: /v/missing\n"
    assert fs("mkdir", "/v/../x") == 1
    assert "Invalid argument" in capsys.readouterr().err
    assert fs("mv", "/v", "/w") == 1
    assert "cross-device" in capsys.readouterr().err.lower()
    assert fs("rm", "/v") == 1
    assert "Is a directory" in capsys.readouterr().err
