"""Holes take no memory: Sparse against a plain bytearray, and truncate/pwrite through the
fs subsystem (the snapshot and the journal carry the holes across a restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fs_harness import FakeKernel
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelfarm.fs.sparse import Sparse
from kernelfarm.fs.tree import File

MIB = 1024 * 1024

steps = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 40), st.binary(max_size=12)),
    st.tuples(st.just("truncate"), st.integers(0, 40)),
    st.tuples(st.just("read"), st.integers(0, 45), st.integers(0, 45)),
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(steps=steps, block=st.sampled_from([1, 3, 4, 16]))
def test_sparse_reads_as_a_bytearray_would(steps: list[tuple[Any, ...]], block: int) -> None:
    sparse, plain = Sparse(0, block), bytearray()
    for op, *args in steps:
        if op == "write":
            offset, data = args
            if offset > len(plain):
                plain.extend(bytes(offset - len(plain)))
            plain[offset:offset + len(data)] = data
            sparse.write(offset, data)
        elif op == "truncate":
            (size,) = args
            del plain[size:]
            plain.extend(bytes(size - len(plain)))
            sparse.truncate(size)
        else:
            offset, length = args
            assert sparse.read(offset, length) == bytes(plain[offset:offset + length])
        assert len(sparse) == len(plain) and bytes(sparse) == bytes(plain)
    again = Sparse.from_extents(len(sparse), list(sparse.extents()))
    assert bytes(again) == bytes(plain)


def test_truncate_and_pwrite_holes_allocate_nothing(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path, snapshot_journal_bytes=1)  # a snapshot at every change
    fs = kernel.api
    fs.mkdir("/v")
    fs.write_file("/v/f", b"head")
    fs.truncate("/v/f", 64 * MIB - 1)
    fs.pwrite("/v/f", 32 * MIB, b"middle")
    node = kernel.fs.volumes["v"].tree.lookup(("f",))
    assert isinstance(node, File) and isinstance(node.data, Sparse)
    assert len(node.data.blocks) == 2  # not 64 MiB
    assert fs.stat("/v/f")["size"] == 64 * MIB - 1
    assert fs.pread("/v/f", 32 * MIB - 2, 10) == b"\0\0middle\0\0"
    kernel.restart()  # from the snapshot, which stores the blocks, not the zeros
    node = kernel.fs.volumes["v"].tree.lookup(("f",))
    assert isinstance(node, File) and isinstance(node.data, Sparse)
    assert len(node.data.blocks) == 2
    assert fs.pread("/v/f", 0, 6) == b"head\0\0"
    assert fs.pread("/v/f", 32 * MIB, 6) == b"middle"
    kernel.close()
