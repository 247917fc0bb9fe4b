"""Parameters msgpack cannot carry (an int past 64 bits, an object of no msgpack type) are
the caller's EINVAL, raised before anything is sent: the connection stays usable, the
asyncio connection keeps no request for them, and the command line prints one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from farmctl import ADMIN_TOKEN, start_farm
from kernelfarm.errors import InvalidParameter
from kernelfarm.rpc.blocking import BlockingConnection
from kernelfarm.rpc.client import connect


def test_a_blocking_call_refuses_them_and_keeps_its_connection(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        conn = BlockingConnection(*farm.control)
        try:
            conn.call("auth.hello", ADMIN_TOKEN, timeout=10)
            for params in ([2**70], [object()]):
                with pytest.raises(InvalidParameter, match="cluster.scale"):
                    conn.call("cluster.scale", *params, timeout=10)
            assert not conn.closed
            assert conn.call("cluster.map", timeout=10)["nslots"] == 16384
        finally:
            conn.close()
        result = subprocess.run(
            [sys.executable, "-m", "kernelfarm", "scale", "99999999999999999999",
             "--control", farm.control_str], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("kernelfarm: 'cluster.scale': cannot encode"), \
            result.stderr


@pytest.mark.asyncio
async def test_an_asyncio_call_refuses_them_and_keeps_no_request(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        conn = await connect(*farm.control)
        try:
            with pytest.raises(InvalidParameter):
                await conn.call("cluster.scale", 2**70, timeout=10)
            assert not conn._pending  # nothing waits for a reply that can never come
            assert (await conn.call("cluster.map", timeout=10))["nslots"] == 16384
        finally:
            conn.close()
