"""A bad request never takes a kernel down: it gets an error or a closed connection."""

from __future__ import annotations

import socket
from typing import Any, Iterator

import msgpack
import pytest

import rawpeer
from farmctl import Farm, raw_call, start_farm
from rawpeer import Peer

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    config = f"[rpc]\nmax_message_bytes = {LIMIT}\n"
    with start_farm(tmp_path_factory.mktemp("hostile"), 1, config_text=config) as farm:
        yield farm


def kernel_addr(farm: Farm) -> tuple[str, int]:
    return rawpeer.kernel_addr(farm.cluster_map())


@pytest.fixture
def peers(farm: Farm) -> Iterator[tuple[Peer, Peer]]:
    """A victim connection and a bystander that must keep being served."""
    victim, bystander = Peer(kernel_addr(farm)), Peer(kernel_addr(farm))
    yield victim, bystander
    bystander.send(msgpack.packb([0, 99, "kernel.ping", []]))
    reply = bystander.next_message()
    assert reply[:3] == [1, 99, None] and reply[3]["kernel"] == 0
    victim.close()
    bystander.close()
    assert raw_call(kernel_addr(farm), "kernel.ping")["kernel"] == 0


def test_garbage_bytes_get_eproto_and_a_closed_connection(peers: tuple[Peer, Peer]) -> None:
    victim, _ = peers
    victim.send(b"\xc1\xc1\xc1 definitely not msgpack")
    message = victim.next_message()
    assert message[:2] == [2, "rpc.error"] and message[2][0]["code"] == "EPROTO"
    assert victim.closed_by_peer()


def test_truncated_message_then_hang_up(peers: tuple[Peer, Peer]) -> None:
    victim, _ = peers
    victim.send(msgpack.packb([0, 1, "kernel.ping", []])[:3])
    victim.sock.shutdown(socket.SHUT_WR)
    assert victim.closed_by_peer()


def test_message_over_the_limit_gets_e2big(peers: tuple[Peer, Peer]) -> None:
    victim, _ = peers
    try:
        victim.send(msgpack.packb([0, 1, "kernel.ping", [b"x" * (LIMIT * 4)]]))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the kernel may hang up before we finish writing
    message = victim.next_message()
    assert message[0] == 2 and message[1] == "rpc.error"
    assert message[2][0]["code"] == "E2BIG"
    assert victim.closed_by_peer()


def test_unknown_method_is_enosys_and_the_connection_stays(peers: tuple[Peer, Peer]) -> None:
    victim, _ = peers
    victim.send(msgpack.packb([0, 5, "no.such.method", []]))
    reply = victim.next_message()
    assert reply[:2] == [1, 5] and reply[2]["code"] == "ENOSYS" and reply[3] is None
    victim.send(msgpack.packb([0, 6, "kernel.ping", []]))
    assert victim.next_message()[:3] == [1, 6, None]


@pytest.mark.parametrize("request_obj, code", [
    ([0, 7, "kernel.ping", [1, 2, 3]], "EINVAL"),         # wrong number of params
    ([0, 7, "kernel.stats", ["x"]], "EINVAL"),
    ([0, 7, 42, []], "EPROTO"),                            # method not a string
    ([0, 7, "kernel.ping", {"a": 1}], "EPROTO"),           # params not an array
])
def test_wrong_types_get_an_error_reply(peers: tuple[Peer, Peer], request_obj: list[Any],
                                        code: str) -> None:
    victim, _ = peers
    victim.send(msgpack.packb(request_obj))
    reply = victim.next_message()
    assert reply[:2] == [1, 7] and reply[2]["code"] == code and reply[2]["message"]


def test_message_without_a_msgid_gets_an_error_notification(peers: tuple[Peer, Peer]) -> None:
    victim, _ = peers
    victim.send(msgpack.packb("just a string") + msgpack.packb([0, "id", "kernel.ping", []]))
    for _ in range(2):
        message = victim.next_message()
        assert message[:2] == [2, "rpc.error"] and message[2][0]["code"] == "EPROTO"
    victim.send(msgpack.packb([0, 8, "kernel.ping", []]))
    assert victim.next_message()[:3] == [1, 8, None]


def test_pipelined_requests_are_all_answered(peers: tuple[Peer, Peer]) -> None:
    victim, _ = peers
    victim.send(b"".join(msgpack.packb([0, i, "kernel.ping", []]) for i in range(500)))
    ids = [victim.next_message()[1] for _ in range(500)]
    assert sorted(ids) == list(range(500))
