"""One connection per kernel: calls that start together share the one being opened."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import kernelfarm.aio
from farmctl import start_farm
from kernelfarm.hostport import Addr


@pytest.mark.asyncio
async def test_concurrent_first_calls_open_one_connection(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        async with kernelfarm.aio.Client(farm.control) as client:
            opened: list[Addr] = []
            open_for_real = client._open

            async def counting_open(addr: Addr) -> Any:
                opened.append(addr)
                return await open_for_real(addr)

            client._open = counting_open  # type: ignore[method-assign]
            (kernel,) = client.router.kernels()
            pings = await asyncio.gather(
                *(client.call_kernel(kernel, "kernel.ping") for _ in range(50)))
            assert len(pings) == 50 and opened == [kernel]
