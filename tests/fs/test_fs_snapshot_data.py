"""A snapshot writes a big file from its own buffers (:func:`kernelfarm.fs.snapshot._put_file`):
the same bytes as packing and framing a copy of it, without the copies."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from kernelfarm.fs import journal, snapshot
from kernelfarm.fs.chunks import Chunks
from kernelfarm.fs.sparse import Sparse
from kernelfarm.fs.tree import UNLIMITED, File, Tree

KIB, MIB = 1024, 1024 * 1024
NOW = 1_700_000_000_000_000_000


def tree_of_every_kind() -> Tree:
    """Files on both sides of the threshold, a streamed file (kept as its pieces, small
    appends gathered), a sparse file, a directory and a symlink."""
    tree = Tree.new("v", 0o755, NOW)
    tree.mkdir(("d",), 0o700, tree.next_ino, NOW)
    for name, size in (("small", 100), ("under", snapshot.BY_REFERENCE - 1),
                       ("at", snapshot.BY_REFERENCE), ("over", 70 * KIB)):
        tree.write_file(("d", name), os.urandom(size), tree.next_ino, NOW)
    tree.write_file(("stream",), b"", tree.next_ino, NOW)
    at = 0
    for size in (100 * KIB, 300 * KIB, 10, 20, 64 * KIB):
        at += tree.pwrite(("stream",), at, os.urandom(size), NOW)
    tree.write_file(("holes",), b"x" * 10, tree.next_ino, NOW)
    tree.truncate(("holes",), 5 * MIB, NOW)
    tree.symlink("d/over", ("link",), tree.next_ino, NOW)
    return tree


def test_big_files_are_written_byte_for_byte_as_before(tmp_path: Path) -> None:
    """Every record as the snapshot wrote them before (each payload a ``bytes``, packed,
    then framed), and the tree loads back the same."""
    tree = tree_of_every_kind()
    stream = tree.lookup(("stream",))
    assert isinstance(stream, File) and isinstance(stream.data, Chunks)
    assert len(stream.data.pieces) == 4  # three requests kept, two small appends gathered
    holes = tree.lookup(("holes",))
    assert isinstance(holes, File) and isinstance(holes.data, Sparse)
    path = str(tmp_path / "snapshot")
    size = snapshot.write_temp(path, tree, 7)
    packer = msgpack.Packer(use_bin_type=True)
    before = [journal.frame(packer.pack(
        {"format": snapshot.FORMAT, "volume": "v", "generation": 7, "next_ino": tree.next_ino}))]
    count = 0
    for entry in snapshot._entries(tree):
        payload = entry[-1]
        if entry[2] == snapshot.FILE and type(payload) is not tuple:
            entry = (*entry[:-1], bytes(payload))
        before.append(journal.frame(packer.pack(entry)))
        count += 1
    before.append(journal.frame(packer.pack(("end", count))))
    assert Path(path).read_bytes() == b"".join(before)
    assert size == len(b"".join(before))
    loaded, generation = snapshot.load(path, UNLIMITED)
    assert generation == 7
    for comps in (("d", "small"), ("d", "under"), ("d", "at"), ("d", "over"), ("stream",),
                  ("holes",)):
        assert loaded.read_file(comps) == tree.read_file(comps)


@pytest.mark.parametrize("guard", ["on", "switched off"])
def test_a_streamed_file_is_snapshotted_without_copies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guard: str) -> None:
    """A 16 MiB file kept as 16 pieces of 1 MiB: writing its snapshot allocates under
    1 MiB (tracemalloc's peak).  Switched off (every file packed from a joined copy, as
    before) the peak is the file's size three times over, less what is freed between."""
    if guard == "switched off":
        monkeypatch.setattr(snapshot, "BY_REFERENCE", 1 << 62)
    tree = Tree.new("v", 0o755, NOW)
    tree.write_file(("big",), b"", tree.next_ino, NOW)
    block = os.urandom(MIB)
    for n in range(16):
        tree.pwrite(("big",), n * MIB, bytes(block), NOW)
    tracemalloc.start()
    try:
        snapshot.write_temp(str(tmp_path / "snapshot"), tree, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if guard == "on":
        assert peak < MIB
    else:
        assert peak > 32 * MIB
    loaded, _ = snapshot.load(str(tmp_path / "snapshot"), UNLIMITED)
    assert loaded.read_file(("big",)) == block * 16


def test_a_snapshot_is_private_as_the_journals_are(tmp_path: Path) -> None:
    """0600 whatever the umask: it holds every file of the volume (it was 0644)."""
    previous = os.umask(0o022)
    try:
        snapshot.write(str(tmp_path / "snapshot"), tree_of_every_kind(), 1)
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "snapshot").st_mode & 0o777 == 0o600
