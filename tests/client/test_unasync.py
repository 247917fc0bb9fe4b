"""One source, two faces: the blocking client is the asyncio one, generated."""

from __future__ import annotations

import inspect

import kernelfarm.aio
import kernelfarm.client
from kernelfarm.client import unasync


def test_the_blocking_client_is_generated_from_the_asyncio_one() -> None:
    """Fails when someone edits ``_sync/`` by hand or ``_async/`` without regenerating."""
    stale = [str(path) for path, text in unasync.expected().items()
             if path.read_text() != text]
    assert stale == [], "run: python -m kernelfarm.client.unasync"


def test_the_rewrite_rules() -> None:
    source = "\n".join([
        "from kernelfarm.client._async.io import RpcClientConnection, sleep",
        "from kernelfarm.client.opening import opening  # async only",
        "    # sync only: self.connect()",
        "    async def __aenter__(self) -> AsyncClient:",
        "        async with x: await sleep(1)",
        "    call: Callable[..., Awaitable[list[Any]]]",
    ])
    assert unasync.unasync(source, "f.py").splitlines()[1:] == [
        "from kernelfarm.client._sync.io import BlockingConnection, sleep",
        "    self.connect()",
        "    def __enter__(self) -> Client:",
        "        with x: sleep(1)",
        "    call: Callable[..., list[Any]]",
    ]


def public_api(cls: type) -> dict[str, list[str]]:
    return {name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if callable(member) and (not name.startswith("_") or name in ("__init__",))}


def test_both_clients_offer_the_same_methods_with_the_same_arguments() -> None:
    for sync, aio in [(kernelfarm.client.Client, kernelfarm.aio.Client),
                      (kernelfarm.client.FsApi, kernelfarm.aio.FsApi),
                      (kernelfarm.client.NetApi, kernelfarm.aio.NetApi),
                      (kernelfarm.client.Socket, kernelfarm.aio.Socket)]:
        assert public_api(sync) == public_api(aio) != {}
