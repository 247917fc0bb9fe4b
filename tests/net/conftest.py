"""Fixtures of the net tests (the harness itself is in ``net_harness``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import pytest

from kernelfarm.bench.echo import running_echo
from kernelfarm.config import build
from kernelfarm.net.subsystem import NetSubsystem
from net_harness import FakeKernel, NetHarness


@pytest.fixture
def make_net(tmp_path: Path) -> Any:
    """``make_net(**net_settings)`` -> a harness over a fresh NetSubsystem; closed at exit."""
    made: list[NetSubsystem] = []

    def make(**settings: Any) -> NetHarness:
        ctx = FakeKernel(build({"net": settings}), tmp_path, asyncio.get_running_loop())
        net = NetSubsystem(ctx)
        made.append(net)
        return NetHarness(net)

    yield make
    for net in made:
        net.close()


@pytest.fixture
def echo_port() -> Iterator[int]:
    """The port of the byte echo peer (the benchmarks' own), a real process; reaped."""
    with running_echo("bytes") as peer:
        yield peer.address[1]
