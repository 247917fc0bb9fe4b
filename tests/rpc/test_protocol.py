"""The sans-I/O msgpack-rpc layer: bytes in, classified messages out."""

from __future__ import annotations

import enum
import tracemalloc
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelfarm.errors import MessageTooBig, ProtocolError
from kernelfarm.rpc.protocol import (
    GATHER_BYTES, Malformed, MessageType, Notification, Request, Response, RpcStream,
    ServerStream, classify, encode_notification, encode_replies, encode_request,
    encode_response,
)


def test_messages_round_trip_in_one_stream() -> None:
    data = (encode_request(7, "fs.stat", ["/a"]) + encode_response(7, None, b"\x00")
            + encode_notification("hello", [1]))
    stream = RpcStream(1 << 20)
    assert stream.messages(data) == [Request(7, "fs.stat", ["/a"]), Response(7, None, b"\x00"),
                                     Notification("hello", [1])]


def test_str_stays_str_and_bytes_stay_bin() -> None:
    stream = RpcStream(1 << 20)
    [request] = stream.messages(encode_request(1, "m", ["text", b"bin"]))
    assert isinstance(request, Request)
    assert request.params == ["text", b"bin"]
    assert type(request.params[0]) is str and type(request.params[1]) is bytes


def test_a_message_split_anywhere_is_reassembled() -> None:
    data = encode_request(3, "kernel.ping", [])
    for cut in range(1, len(data)):
        stream = RpcStream(1 << 20)
        assert stream.messages(data[:cut]) == []
        assert stream.messages(data[cut:]) == [Request(3, "kernel.ping", [])]


@pytest.mark.parametrize("obj, msgid, reason", [
    (5, None, "non-empty array"),
    ([], None, "non-empty array"),
    ([0, 1, "m"], 1, "a request is"),
    ([0, "x", "m", []], None, "msgid"),
    ([0, -1, "m", []], None, "msgid"),
    ([0, 9, 5, []], 9, "method must be a string"),
    ([0, 9, "m", {}], 9, "params must be an array"),
    ([7, 9, "m", []], 9, "unknown message type"),
    ([False, 9, "m", []], 9, "unknown message type"),
])
def test_malformed_messages_are_named(obj: object, msgid: int | None, reason: str) -> None:
    message = classify(obj)
    assert isinstance(message, Malformed)
    assert message.msgid == msgid and reason in message.reason


MALFORMED = [[0, 1, "m"], [0, "x", "m", []], [0, 9, 5, []], [0, 9, "m", {}], [0, 9, "m", 3],
             [7, 9, "m", []], [1, 9], [2, "n", 5]]
"""One of each malformed message a server answers (eight: the ninth closes the stream)."""


class _Conn:
    reserved = 0


def _served(data: bytes, tuples: bool) -> tuple[list[list[Any]], list[list[Any]], list[object]]:
    """What a server stream answers for ``data``: its replies and notices, and the params
    its handler was called with."""
    seen: list[object] = []

    def handle(conn: object, msgid: int, method: str, params: object) -> list[object]:
        seen.append(params)
        return [1, msgid, None, method]

    stream = ServerStream(1 << 20, tuples)
    stream.feed(data)
    batch = stream.serve(handle, _Conn(), 64, 1 << 20)
    return batch.replies, batch.notices, seen


def test_a_stream_of_tuples_answers_every_message_in_the_same_words() -> None:
    """A kernel's listener decodes arrays as tuples (no list per message): a malformed
    message gets the same error, by the same words, as from a stream of lists, and a
    request's handler gets the same params as a tuple."""
    data = b"".join(msgpack.packb(obj) for obj in MALFORMED)
    data += encode_request(4, "fs.stat", ["/a", [1, 2]])
    replies, notices, seen = _served(data, tuples=True)
    assert (replies, notices) == _served(data, tuples=False)[:2]
    assert [reply[2]["message"] for reply in replies[:5]] == [
        "a request is [0, msgid, method, params]", "method must be a string",
        "params must be an array", "params must be an array", "unknown message type 7"]
    assert [notice[2][0]["message"] for notice in notices] == [
        "msgid must be an unsigned 32-bit integer", "a response is [1, msgid, error, result]",
        "a notification is [2, method, params]"]
    assert seen == [("/a", (1, 2))] and replies[5] == [1, 4, None, "fs.stat"]


def test_a_request_msgid_is_answered_as_sent_if_it_is_an_integer() -> None:
    """The fast path checks a msgid's type, not its 32-bit range (see ServerStream): a
    request with an integer msgid outside it is served and answered with the msgid it
    sent, so its reply still matches it; one that is no integer is refused by name."""
    data = b"".join(msgpack.packb([0, msgid, "fs.stat", ["/a"]])
                    for msgid in (-1, 2**32, 2**40, True, 1.0))
    replies, notices, seen = _served(data, tuples=True)
    assert replies == [[1, -1, None, "fs.stat"], [1, 2**32, None, "fs.stat"],
                       [1, 2**40, None, "fs.stat"]]
    assert seen == [("/a",)] * 3
    assert [notice[2][0]["message"] for notice in notices] == [
        "msgid must be an unsigned 32-bit integer"] * 2


def test_message_types_are_the_spec_numbers() -> None:
    assert [int(t) for t in MessageType] == [0, 1, 2]


def test_garbage_is_a_protocol_error() -> None:
    stream = RpcStream(1 << 20)
    with pytest.raises(ProtocolError) as info:
        stream.messages(b"\xc1")
    assert info.value.code == "EPROTO"


def test_a_message_over_the_limit_is_e2big_before_it_is_buffered() -> None:
    stream = RpcStream(4096)
    big = encode_request(1, "fs.write_file", ["/v/f", b"x" * 10_000])
    with pytest.raises(MessageTooBig) as info:
        stream.messages(big[:5000])
    assert info.value.code == "E2BIG"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    stream = RpcStream(1024)
    try:
        messages = stream.messages(data)
    except ProtocolError:
        return
    for message in messages:
        assert isinstance(message, (Request, Response, Notification, Malformed))


class Text(str):
    pass


class State(str, enum.Enum):
    RUNNING = "running"


@pytest.mark.parametrize("count", [1, 15, 16, 17, 0xFFFF, 0x10000])
def test_a_batch_of_replies_is_what_msgpack_packs_one_by_one(count: int) -> None:
    # Batches around the array header sizes (fixarray, array16, array32) cut exactly.
    results = [None, "é", b"\x00bin", {"size": 2**63, "mode": -1}, [1.5, True],
               (1, 2), bytearray(b"ba"), Text("sub"), State.RUNNING]
    replies = [[1, i, None, results[i % len(results)]] for i in range(count)]
    packer = msgpack.Packer(autoreset=False)
    for reply in replies:
        packer.pack(reply)
    assert encode_replies(replies) == packer.bytes()


def test_an_encoded_result_is_sent_as_it_is() -> None:
    stat = {"type": "file", "size": 3}
    assert (encode_replies([[1, 5, None, msgspec.Raw(msgpack.packb(stat))]])
            == msgpack.packb([1, 5, None, stat]))


@pytest.mark.parametrize("size", [GATHER_BYTES, 8 << 20])
def test_a_big_reply_is_copied_once(size: int) -> None:
    # The encoder copies the result once (into a buffer it grows by half as much again);
    # cutting the batch's header off must not copy it a second time (a 1 MiB pread
    # reply): that would take the peak to 2.5 times the result.
    data = bytes(size)
    replies = [[1, 7, None, data]]
    tracemalloc.start()
    try:
        wire = encode_replies(replies)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bytes(wire) == msgpack.packb([1, 7, None, data])
    assert peak < 2 * size


@pytest.mark.parametrize("result", [object(), 2**64])
def test_a_result_that_cannot_be_encoded_raises(result: object) -> None:
    with pytest.raises((TypeError, OverflowError)):
        encode_replies([[1, 1, None, "fine"], [1, 2, None, result]])
