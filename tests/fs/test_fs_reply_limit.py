"""A read whose reply would be over ``rpc.max_message_bytes`` is refused (E2BIG) by the
kernel before the reply is built, and says how to read the file instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from fs_harness import FakeKernel

from kernelfarm.errors import MessageTooBig

MIB = 1024 * 1024


def test_read_file_and_pread_over_the_message_limit_are_e2big(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path)
    limit = kernel.config.rpc.max_message_bytes
    fs = kernel.api
    fs.mkdir("/v")
    fs.write_file("/v/big", b"")
    for offset in range(0, limit + MIB, 4 * MIB):
        fs.pwrite("/v/big", offset, b"x" * 4 * MIB)
    with pytest.raises(MessageTooBig) as info:
        fs.read_file("/v/big")
    assert "fs.pread" in str(info.value) and "/v/big" in str(info.value)
    with pytest.raises(MessageTooBig):
        fs.pread("/v/big", 0, limit)
    assert fs.pread("/v/big", 0, MIB) == b"x" * MIB            # a piece is fine
    size = fs.stat("/v/big")["size"]
    assert len(fs.pread("/v/big", size - MIB, limit)) == MIB  # clamped to the file: fits
    fs.write_file("/v/small", b"y" * 100)
    assert fs.read_file("/v/small") == b"y" * 100
    kernel.close()
