"""A bug in a handler is the server's fault; a client's mistake is the client's.

A bug answers ``EIO`` "internal error" and is logged with its traceback, once -- also when
it is a ``TypeError`` or ``ValueError``, which is what broken code raises.  A bad parameter
stays ``EINVAL`` with no traceback.  The kernel serves a real connection on loopback here,
built in this process so a handler can be given a bug to have.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio

from kernelfarm import config as configuration
from kernelfarm.boot import BootInfo
from kernelfarm.kernel import kernel as kernel_module
from kernelfarm.kernel.kernel import Kernel
from kernelfarm.partition import NSLOTS
from kernelfarm.ratelog import RateLimitedLog
from kernelfarm.rpc.client import RpcClientConnection, connect
from kernelfarm.rpc.server import connection_factory

LOGGER = "kernelfarm.kernel.kernel"


def give_bugs(kernel: Kernel) -> None:
    """``fs.stat`` breaks at once with a TypeError; ``net.recv`` waits, then breaks with a
    ValueError (a waiting call's failure takes the other path through the server)."""

    def stat(path: Any) -> dict[str, Any]:
        return {"size": len(path) + None}  # type: ignore[operator]  # the bug under test

    async def recv(conn: Any, ns: Any, sid: Any, size: Any, timeout: Any = None) -> bytes:
        await asyncio.sleep(0)
        raise ValueError("a bug's own words")

    for name, handler in (("fs.stat", stat), ("net.recv", recv)):
        kernel.methods[name] = replace(kernel.methods[name], handler=handler)


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[RpcClientConnection]:
    # A fresh rate limit: what other tests logged must not keep this one's line out.
    monkeypatch.setattr(kernel_module, "failures",
                        RateLimitedLog(logging.getLogger(LOGGER)))
    loop = asyncio.get_running_loop()
    config = configuration.load(None, {"auth": {"required": False}})
    boot = BootInfo(kernel_id=0, core=0, epoch=1, ranges=[[0, NSLOTS - 1, 0]],
                    addrs={0: ["127.0.0.1", 1]}, config=config.to_dict(),
                    data_dir=str(tmp_path), supervisor_pid=0)
    kernel = Kernel(boot, config, loop)
    give_bugs(kernel)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await loop.create_server(connection_factory(kernel, config.rpc), sock=sock)
    client = await connect(*sock.getsockname()[:2])
    try:
        yield client
    finally:
        client.close()
        server.close()
        await server.wait_closed()
        kernel.close()


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.exc_info]


@pytest.mark.asyncio
@pytest.mark.parametrize("method, params, raised", [
    ("fs.stat", ["/v/f"], "TypeError"),
    ("net.recv", ["ns", 1, 10], "ValueError"),
])
async def test_a_type_or_value_error_from_a_bug_is_an_internal_error_logged_once(
        served: RpcClientConnection, caplog: pytest.LogCaptureFixture, method: str,
        params: list[Any], raised: str) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(OSError) as failed:
        await served.call(method, *params, timeout=10)
    assert failed.value.errno == errno.EIO
    assert failed.value.strerror == f"internal error: {raised}"
    assert "own words" not in str(failed.value)  # the bug's text stays in the log
    [record] = tracebacks(caplog)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is not None
    assert record.exc_info[0].__name__ == raised


@pytest.mark.asyncio
async def test_a_clients_bad_parameter_stays_einval_without_a_traceback(
        served: RpcClientConnection, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    await served.call("fs.mkdir", "/v")
    calls: list[tuple[str, list[Any], str]] = [
        ("net.socket", ["ns", "sctp"], "sctp"),             # a value net refuses
        ("fs.mkdir", ["/v/d", -1], "mode must not be negative"),
        ("fs.write_file", ["/v/f", "text"], "data must be bytes"),  # a type fs refuses
        ("net.socket", [7, "tcp"], "namespace must be a str"),      # the partition key
        ("fs.mkdir", ["/v/d", 1, 2, 3], "fs.mkdir takes 1 or 2 parameters"),
    ]
    for method, params, words in calls:
        with pytest.raises(OSError) as failed:
            await served.call(method, *params, timeout=10)
        assert failed.value.errno == errno.EINVAL, (method, failed.value)
        assert words in str(failed.value)
    assert tracebacks(caplog) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
