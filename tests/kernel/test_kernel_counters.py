"""What ``kernel.stats`` counts: errors are failed requests; MOVED and TRYAGAIN are
routing (a client refreshing its table), counted apart as ``redirected``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kernelfarm import config as configuration
from kernelfarm.boot import BootInfo
from kernelfarm.kernel.process import make_kernel


class Sink:
    session: object = None

    def write(self, data: bytes) -> None:
        pass

    def on_close(self, callback: object) -> None:
        pass


@pytest.mark.asyncio
async def test_moved_and_tryagain_are_redirects_not_errors(tmp_path: Path) -> None:
    config = configuration.load()
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, 8191, 0], [8192, 16383, 1]],
                    addrs={0: ["127.0.0.1", 1], 1: ["127.0.0.1", 2]},
                    config=config.to_dict(), data_dir=str(tmp_path), supervisor_pid=0)
    kernel = make_kernel(boot, config, asyncio.get_running_loop())
    sink = Sink()
    sink.session = kernel.gate.trusted  # the supervisor's channel: no hello, every key
    try:
        replies = [kernel.handle(sink, i, "fs.stat", [f"/v{i}"]) for i in range(40)]
        codes = [reply[2]["code"] for reply in replies if reply and reply[2]]
        moved = codes.count("MOVED")
        assert 0 < moved < 40  # half the volumes hash to kernel 1
        kernel.handle(sink, 99, "no.such", [])
        stats = kernel.stats()
        assert (stats["redirected"], stats["errors"]) == (moved, len(codes) - moved + 1)
        assert "MOVED" not in stats["errors_by_code"]
    finally:
        kernel.close()
