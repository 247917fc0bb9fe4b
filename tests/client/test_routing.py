"""The routing and retry rules both clients share."""

from __future__ import annotations

from typing import Any

import pytest

from kernelfarm.client.routing import Reaction, Router, partition_key, reaction_to
from kernelfarm.errors import ConnectionLost, Moved, ProtocolError, TryAgain
from kernelfarm.partition import initial_assignment, key_slot


def cluster_map(n: int) -> dict[str, Any]:
    table = initial_assignment(list(range(n)))
    return {"epoch": 1, "slots": table.to_ranges(),
            "kernels": [{"id": k, "addr": ["127.0.0.1", 9000 + k], "state": "running"}
                        for k in range(n)]}


def test_requests_route_to_the_owner_of_their_partition_key() -> None:
    router = Router(cluster_map(2))
    table = initial_assignment([0, 1])
    for volume in ("alice", "bob", "carol", "123456789"):
        owner = table.owner(key_slot(volume))
        assert router.route("fs.stat", [f"/{volume}/x"]) == ("127.0.0.1", 9000 + owner)
        assert router.route("net.list", [volume]) == ("127.0.0.1", 9000 + owner)


@pytest.mark.parametrize("method, params, key", [
    ("fs.stat", ["/alice/a/b"], "alice"),
    ("fs.listdir", ["/"], None),            # any kernel; the client fans out
    ("fs.stat", [42], None),                # bad params: a kernel answers EINVAL
    ("net.socket", ["ns1", "tcp"], "ns1"),
    ("kernel.ping", [], None),
    ("nosuch.method", ["x"], None),
])
def test_partition_keys(method: str, params: list[Any], key: str | None) -> None:
    assert partition_key(method, params) == key


def test_reactions() -> None:
    assert reaction_to(Moved("m"), reached=True) == Reaction(refresh=True)
    assert reaction_to(TryAgain("t"), reached=True) == Reaction(backoff=True)
    assert reaction_to(ConnectionRefusedError(), reached=False) == \
        Reaction(backoff=True, refresh=True)
    assert reaction_to(ConnectionRefusedError(), reached=True) is None  # net.connect's result
    assert reaction_to(ConnectionLost("x"), reached=True) == \
        Reaction(refresh=True, only_if_removed=True)
    assert reaction_to(ProtocolError("p"), reached=True) is None
    assert reaction_to(FileNotFoundError(), reached=True) is None
