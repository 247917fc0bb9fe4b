"""The asyncio server adapter: out-of-order replies and the in-flight limit (backpressure)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio

from kernelfarm.errors import to_wire
from kernelfarm.rpc.client import RpcClientConnection, connect
from kernelfarm.rpc.protocol import Wire
from kernelfarm.rpc.server import ServerConnection


class GateService:
    """``wait(name)`` answers when the test opens gate ``name``; ``echo(x)`` at once."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.closed = 0
        self.writes = 0

    def handle(self, conn: ServerConnection, msgid: int, method: str,
               params: Sequence[Any]) -> list[Any] | None:
        if method == "echo":
            return [1, msgid, None, params[0]]
        if method == "unencodable":
            return [1, msgid, None, object()]
        name = params[0]
        gate = self.gates.setdefault(name, asyncio.Event())
        self.started.append(name)
        conn.start_call(msgid, self._wait(gate, name))
        return None

    async def _wait(self, gate: asyncio.Event, name: str) -> str:
        await gate.wait()
        return name

    def open(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()

    def send(self, conn: ServerConnection, data: Wire) -> None:
        self.writes += 1
        conn.write(data)

    def fault(self, exc: BaseException) -> dict[str, Any]:
        return to_wire(exc)

    def connection_made(self, conn: ServerConnection) -> None:
        pass

    def connection_closed(self, conn: ServerConnection) -> None:
        self.closed += 1


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[GateService, RpcClientConnection]]:
    service = GateService()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await loop.create_server(
        lambda: ServerConnection(service, max_message_bytes=1 << 20, max_inflight=2,
                                 write_buffer_bytes=1 << 16), sock=sock)
    client = await connect(*sock.getsockname()[:2])
    yield service, client
    client.close()
    server.close()
    for gate in service.gates.values():
        gate.set()


@pytest.mark.asyncio
async def test_replies_come_back_out_of_order(
        served: tuple[GateService, RpcClientConnection]) -> None:
    service, client = served
    slow = asyncio.ensure_future(client.call("wait", "slow"))
    fast = asyncio.ensure_future(client.call("wait", "fast"))
    await until(lambda: len(service.started) == 2)
    service.open("fast")
    assert await fast == "fast"
    assert not slow.done()
    service.open("slow")
    assert await slow == "slow"


@pytest.mark.asyncio
async def test_replies_of_calls_that_end_in_one_turn_leave_in_one_write(
        served: tuple[GateService, RpcClientConnection]) -> None:
    service, client = served
    calls = [asyncio.ensure_future(client.call("wait", name)) for name in ("a", "b")]
    await until(lambda: len(service.started) == 2)
    writes = service.writes
    service.open("a")
    service.open("b")  # both calls end in the same loop turn
    assert await asyncio.gather(*calls) == ["a", "b"]
    assert service.writes == writes + 1


@pytest.mark.asyncio
async def test_a_result_that_cannot_be_encoded_is_an_error_and_the_batch_goes_on(
        served: tuple[GateService, RpcClientConnection]) -> None:
    service, client = served
    calls = [client.call("echo", "before"), client.call("unencodable"),
             client.call("echo", "after")]
    before, failed, after = await asyncio.gather(*calls, return_exceptions=True)
    assert (before, after) == ("before", "after")
    assert isinstance(failed, OSError) and "cannot be encoded" in str(failed)


@pytest.mark.asyncio
async def test_inflight_limit_stops_reading_until_a_call_finishes(
        served: tuple[GateService, RpcClientConnection]) -> None:
    service, client = served
    calls = [asyncio.ensure_future(client.call("wait", str(i))) for i in range(4)]
    echo = asyncio.ensure_future(client.call("echo", "behind"))
    await until(lambda: len(service.started) == 2)
    await asyncio.sleep(0.05)  # give a wrongly unbounded server time to read further
    assert service.started == ["0", "1"] and not echo.done()
    service.open("0")
    assert await calls[0] == "0"
    await until(lambda: len(service.started) == 3)
    assert service.started == ["0", "1", "2"] and not echo.done()
    for name in ("1", "2", "3"):
        service.open(name)
    assert await asyncio.gather(*calls[1:]) == ["1", "2", "3"]
    assert await echo == "behind"


@pytest.mark.asyncio
async def test_dropping_the_connection_cancels_its_waiting_calls(
        served: tuple[GateService, RpcClientConnection]) -> None:
    service, client = served
    call = asyncio.ensure_future(client.call("wait", "never"))
    await until(lambda: service.started == ["never"])
    client.close()
    await until(lambda: service.closed == 1)
    with pytest.raises(Exception) as info:
        await call
    assert type(info.value).__name__ == "ConnectionLost"
