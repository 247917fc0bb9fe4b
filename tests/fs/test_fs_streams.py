"""Files written as streams of big appends: kept as the request's pieces, journaled by
reference, read with one copy, and exactly the bytes a plain buffer would hold."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
from fs_harness import FakeKernel
from hypothesis import given
from hypothesis import strategies as st

from kernelfarm.fs.chunks import BIG, Chunks
from kernelfarm.fs.volume import BY_REFERENCE, PWRITE, WRITE_FILE, spliced
from kernelfarm.fs.tree import File

KIB = 1024


def node_data(kernel: FakeKernel, path: str) -> object:
    node = kernel.fs.volumes["v"].tree.lookup(tuple(path.split("/")[2:]))
    assert isinstance(node, File)
    return node.data


@given(st.lists(st.integers(1, 3 * BIG), min_size=1, max_size=8),
       st.integers(0, 8 * BIG), st.integers(0, 4 * BIG))
def test_chunks_read_what_one_buffer_would(sizes: list[int], offset: int,
                                           length: int) -> None:
    model = bytearray()
    chunks = Chunks([])
    for n, size in enumerate(sizes):
        data = bytes([n % 251 + 1]) * size
        chunks.append(data)
        model += data
    assert len(chunks) == len(model)
    assert chunks.read(offset, length) == bytes(model[offset:offset + length])
    assert chunks[offset:offset + length] == bytes(model[offset:offset + length])
    assert bytes(chunks) == bytes(model) and chunks.joined() == model


def test_big_appends_are_kept_as_sent_and_small_ones_gathered() -> None:
    big = os.urandom(BIG)
    chunks = Chunks([b"head"])
    chunks.append(big)
    chunks.append(b"a" * 10)
    chunks.append(b"b" * 10)
    assert chunks.pieces[1] is big  # not copied
    assert len(chunks.pieces) == 3 and chunks.pieces[2] == b"a" * 10 + b"b" * 10
    assert chunks.read(len(chunks) - 25, 100) == big[-5:] + b"a" * 10 + b"b" * 10


@pytest.mark.parametrize("kind, args, at", [
    (PWRITE, (("d", "f"), 7 * 2**40, b"x" * BY_REFERENCE, 2**62), 2),
    (WRITE_FILE, (("f",), b"y" * (3 * BY_REFERENCE + 1), 12345, 1), 1),
])
def test_a_record_journaled_by_reference_reads_back_as_the_record(
        kind: int, args: tuple[object, ...], at: int) -> None:
    head, tail = spliced(kind, args, at)
    data = args[at]
    assert isinstance(data, bytes)
    decoded = msgpack.unpackb(head + data + tail, use_list=False, raw=False)
    assert decoded == (kind, *args)


def stream(kernel: FakeKernel, path: str, sizes: list[int]) -> bytearray:
    """Append pieces of ``sizes`` to a new file, one turn each; the bytes written."""
    model = bytearray()
    kernel.api.write_file(path, b"")
    for size in sizes:
        data = os.urandom(size)
        assert kernel.api.pwrite(path, len(model), data) == size
        model += data
    return model


def test_a_streamed_file_reads_back_and_survives_restarts(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, snapshot_journal_bytes=64 * 1024 * 1024)
    kernel.api.mkdir("/v")
    model = stream(kernel, "/v/s", [100 * KIB, 300 * KIB, 10, 17, 200 * KIB, 3])
    assert isinstance(node_data(kernel, "/v/s"), Chunks)
    whole = os.urandom(BY_REFERENCE + 1)
    kernel.api.write_file("/v/w", whole)  # journaled by reference too
    for offset, length in [(0, len(model)), (99 * KIB, 5 * KIB), (400 * KIB - 5, 40),
                           (len(model) - 7, 100), (len(model), 10)]:
        assert kernel.api.pread("/v/s", offset, length) == bytes(model[offset:offset + length])
    assert kernel.api.read_file("/v/s") == bytes(model)
    kernel.close()
    kernel.start()  # replays the records journaled by reference
    assert kernel.api.read_file("/v/s") == bytes(model)
    assert kernel.api.read_file("/v/w") == whole
    assert kernel.api.stat("/v/s")["size"] == len(model)
    kernel.fs.volumes["v"].snapshot()
    kernel.close()
    kernel.start()  # from the snapshot
    assert kernel.api.read_file("/v/s") == bytes(model)
    kernel.close()


@pytest.mark.parametrize("change", ["overwrite", "grow with a hole", "cut", "cut to 0",
                                    "extend"])
def test_any_other_change_of_a_streamed_file_is_exact(tmp_path: Path, change: str) -> None:
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    model = stream(kernel, "/v/s", [BIG, 2 * BIG, 5])
    if change == "overwrite":
        kernel.api.pwrite("/v/s", BIG - 3, b"across a piece boundary")
        model[BIG - 3:BIG + 20] = b"across a piece boundary"
    elif change == "grow with a hole":
        kernel.api.pwrite("/v/s", len(model) + 100, b"past the end")
        model += bytes(100) + b"past the end"
    elif change == "cut":
        kernel.api.truncate("/v/s", BIG + 1)
        del model[BIG + 1:]
    elif change == "cut to 0":  # O_TRUNC, before the file is written again
        kernel.api.truncate("/v/s", 0)
        del model[:]
        assert node_data(kernel, "/v/s") == b""  # nothing joined for it
    else:
        kernel.api.truncate("/v/s", len(model) + 1000)
        model += bytes(1000)
    assert not isinstance(node_data(kernel, "/v/s"), Chunks)
    kernel.api.pwrite("/v/s", len(model), b"tail")  # a small append after that
    model += b"tail"
    assert kernel.api.read_file("/v/s") == bytes(model)
    kernel.close()
    kernel.start()
    assert kernel.api.read_file("/v/s") == bytes(model)
    assert kernel.fs.volumes["v"].tree.bytes_used == len(model)
    kernel.close()
