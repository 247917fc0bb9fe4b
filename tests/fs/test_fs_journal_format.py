"""The journal's on-disk format 2 against what a power cut or an older kernelfarm leaves.

Format 2 (:mod:`kernelfarm.fs.journal`) keeps zeros ahead of its log and seeds every
record's CRC with its file's header.  These tests build on disk the states that format
must survive -- valid records of an earlier use of the same bytes behind the log, and
journals written in format 1 -- and load them with the kernel's own loading code.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fs_harness import FakeKernel

from kernelfarm.fs import journal, store
from kernelfarm.fs.volume import WRITE_FILE
from kernelfarm.partition import key_slot


def volume_dir(data_dir: Path, name: str) -> Path:
    return Path(store.slot_dir(data_dir, key_slot(name))) / store.volume_dirname(name)


def journal_end(kernel: FakeKernel, name: str) -> int:
    return kernel.fs.volumes[name].journal.size


def write_files(kernel: FakeKernel, prefix: str, count: int) -> list[int]:
    """``count`` files of one record each, all records the same size; their ends."""
    ends = []
    for i in range(count):
        kernel.api.write_file(f"/v/{prefix}{i}", b"%s%d" % (prefix.encode(), i) * 20)
        ends.append(journal_end(kernel, "v"))
    return ends


@pytest.mark.parametrize("guard", ["seeded", "switched off"])
def test_records_of_an_earlier_use_of_the_bytes_are_never_replayed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guard: str) -> None:
    """A journal's room may hold valid records of an earlier use of those bytes (a
    recycled file, a reused region).  Here journal.0 of a volume holds ``new0..new2``
    and, right behind them at record boundaries, ``old3..old9`` of another file's
    journal.0 (same volume name, same record sizes).  Loading stops after ``new2``:
    the old records' CRCs start from the other file's seed.

    ``switched off``: every file gets the same header (the seed no longer tells files
    apart): the stale records are replayed as if they were this journal's.  That run
    shows the test catches the fault the seed guards against."""
    if guard == "switched off":
        header = journal.new_header()
        monkeypatch.setattr(journal, "new_header", lambda: header)
    earlier = FakeKernel(tmp_path / "earlier")
    earlier.api.mkdir("/v")
    old_ends = write_files(earlier, "old", 10)
    earlier.close()
    old_bytes = (volume_dir(tmp_path / "earlier", "v") / "journal.0").read_bytes()

    kernel = FakeKernel(tmp_path / "now")
    kernel.api.mkdir("/v")
    new_ends = write_files(kernel, "new", 3)
    kernel.close()
    assert new_ends == old_ends[:3]  # record boundaries line up
    path = volume_dir(tmp_path / "now", "v") / "journal.0"
    with open(path, "r+b") as fh:  # the earlier use's records, behind this journal's
        fh.seek(new_ends[-1])
        fh.write(old_bytes[old_ends[2]:old_ends[-1]])

    kernel.start()
    names = kernel.api.listdir("/v")
    if guard == "switched off":
        assert names == sorted([f"new{i}" for i in range(3)] + [f"old{i}" for i in range(3, 10)])
        kernel.close()
        return
    assert names == [f"new{i}" for i in range(3)]
    assert path.stat().st_size == new_ends[-1]  # not room: cut off as damage
    kernel.api.write_file("/v/after", b"appended after the cut")
    kernel.close()
    kernel.start()
    assert kernel.api.listdir("/v") == ["after", "new0", "new1", "new2"]
    kernel.close()


def format_1(records: list[tuple[object, ...]]) -> bytes:
    """Records framed as format 1 wrote them: no file header, CRC-32 from 0."""
    return b"".join(journal.frame(msgpack.packb(record)) for record in records)


@pytest.mark.parametrize("tail", ["whole", "torn"])
def test_a_volume_whose_journal_is_in_format_1_loads_and_writes_on_in_format_2(
        tmp_path: Path, tail: str) -> None:
    """An older kernelfarm's journal (no header, CRCs from 0) is replayed and never
    appended to: writes go to the next generation, in format 2, and both survive a
    restart, and the next snapshot folds them in."""
    kernel = FakeKernel(tmp_path, snapshot_journal_bytes=64 * 1024 * 1024)
    kernel.api.mkdir("/v")
    kernel.close()
    directory = volume_dir(tmp_path, "v")
    old = format_1([(WRITE_FILE, (f"f{i}",), b"old %d" % i, 2 + i, 1000 + i)
                    for i in range(5)])
    if tail == "torn":
        old += format_1([(WRITE_FILE, ("torn",), b"never whole", 9, 2000)])[:-3]
    (directory / "journal.0").write_bytes(old)

    kernel.start()
    assert kernel.api.listdir("/v") == [f"f{i}" for i in range(5)]
    assert kernel.api.read_file("/v/f3") == b"old 3"
    assert kernel.fs.volumes["v"].generation == 1
    with open(directory / "journal.1", "rb") as fh:
        assert fh.read(4) == journal.MAGIC
    kernel.api.write_file("/v/new", b"format 2")
    kernel.close()
    assert (directory / "journal.0").read_bytes() == format_1(
        [(WRITE_FILE, (f"f{i}",), b"old %d" % i, 2 + i, 1000 + i) for i in range(5)])

    kernel.start()
    assert kernel.api.listdir("/v") == ["f0", "f1", "f2", "f3", "f4", "new"]
    assert kernel.api.stat("/v/f4")["mtime_ns"] == 1004  # replayed as recorded
    assert kernel.fs.volumes["v"].generation == 1  # format 2: appended to
    kernel.fs.volumes["v"].snapshot()
    assert sorted(os.listdir(directory)) == ["VOLUME", "journal.2", "snapshot"]
    kernel.close()
    kernel.start()
    assert kernel.api.read_file("/v/new") == b"format 2"
    assert kernel.api.read_file("/v/f0") == b"old 0"
    kernel.close()


def test_an_empty_journal_file_loads_as_an_empty_journal(tmp_path: Path) -> None:
    """An empty journal: what format 1 created, or a header a power cut took (fsync
    ``never``).  It loads with nothing to replay and the volume writes on."""
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    kernel.close()
    (volume_dir(tmp_path, "v") / "journal.0").write_bytes(b"")
    kernel.start()
    assert kernel.api.listdir("/v") == []
    kernel.api.write_file("/v/f", b"after")
    kernel.close()
    kernel.start()
    assert kernel.api.read_file("/v/f") == b"after"
    kernel.close()


def frames_of(content: bytes) -> list[bytes]:
    """The payload of each frame of a format-2 journal, read independently of the code
    under test: from the file header to the zeros kept ahead of the log."""
    assert content[:4] == journal.MAGIC
    frames, pos = [], journal.FILE_HEADER.size
    while pos + journal.HEADER.size <= len(content):
        length, _crc = journal.HEADER.unpack_from(content, pos)
        if length == 0:
            break
        frames.append(content[pos + journal.HEADER.size:pos + journal.HEADER.size + length])
        pos += journal.HEADER.size + length
    return frames


def test_a_turns_records_are_one_frame_and_replay_in_order(tmp_path: Path) -> None:
    """The records of one turn are framed as one group (one header, one CRC): the frame
    is the msgpack array of the records, which replay applies in order -- a later write
    of the same file in the turn wins, a file made and renamed in the turn is there."""
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    results = kernel.turn([("fs.write_file", "/v/a", b"first"),
                           ("fs.write_file", "/v/b", b"bee"),
                           ("fs.write_file", "/v/a", b"second"),
                           ("fs.rename", "/v/b", "/v/c")])
    assert results == [None, None, None, None]
    path = volume_dir(tmp_path, "v") / "journal.0"
    last = msgpack.unpackb(frames_of(path.read_bytes())[-1])
    assert [record[0] for record in last] == [WRITE_FILE] * 3 + [6]  # 6: RENAME
    kernel.crash()
    assert kernel.api.read_file("/v/a") == b"second"
    assert kernel.api.read_file("/v/c") == b"bee"
    assert kernel.api.listdir("/v") == ["a", "c"]
    kernel.close()


def test_a_torn_group_is_cut_whole_and_the_turns_before_it_stay(tmp_path: Path) -> None:
    """A power cut in the middle of a group's frame loses that turn's records, all of
    them (none was acknowledged: the turn's replies wait for its sync), and nothing
    before it; the volume appends after the cut."""
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    kernel.turn([("fs.write_file", f"/v/kept{i}", b"k%d" % i) for i in range(5)])
    before = journal_end(kernel, "v")
    kernel.turn([("fs.write_file", f"/v/torn{i}", b"t%d" % i) for i in range(5)])
    after = journal_end(kernel, "v")
    kernel.close()
    path = volume_dir(tmp_path, "v") / "journal.0"
    content = path.read_bytes()
    middle = (before + after) // 2
    path.write_bytes(content[:middle] + bytes(len(content) - middle))  # torn in place
    kernel.start()
    assert kernel.api.listdir("/v") == [f"kept{i}" for i in range(5)]
    assert journal_end(kernel, "v") == before
    kernel.api.write_file("/v/after", b"after the cut")
    kernel.close()
    kernel.start()
    assert kernel.api.read_file("/v/after") == b"after the cut"
    assert kernel.api.read_file("/v/kept4") == b"k4"
    kernel.close()


def test_a_big_turn_is_framed_in_bounded_groups(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A turn with more records than ``GROUP_RECORDS`` is framed as several groups (each
    read and replayed whole, so a group bounds one step of a replay); a big payload
    journaled by reference between small records keeps its place."""
    monkeypatch.setattr(journal, "GROUP_RECORDS", 4)
    kernel = FakeKernel(tmp_path)
    kernel.api.mkdir("/v")
    big = bytes(range(256)) * 512  # 128 KiB: journaled by reference
    requests: list[tuple[object, ...]] = [("fs.write_file", f"/v/f{i}", b"%d" % i)
                                          for i in range(10)]
    requests.insert(6, ("fs.write_file", "/v/f3", big))
    kernel.turn(requests)
    content = (volume_dir(tmp_path, "v") / "journal.0").read_bytes()
    sizes = [len(records) if type(records[0]) is not int else 1
             for records in map(msgpack.unpackb, frames_of(content))]
    assert sizes == [4, 2, 1, 4]  # f0-f3, f4-f5, the big f3, f6-f9
    kernel.crash()
    assert kernel.api.read_file("/v/f3") == big
    assert sorted(kernel.api.listdir("/v")) == sorted(f"f{i}" for i in range(10))
    kernel.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=64), st.binary(max_size=3000),
                          st.binary(max_size=64)), min_size=1, max_size=5),
       st.lists(st.binary(min_size=1, max_size=100), max_size=5))
def test_frames_check_out_with_zlibs_crc32(
        parts: list[tuple[bytes, bytes, bytes]], records: list[bytes]) -> None:
    """The CRC the journal computes (ISA-L's, chained over the parts of a record kept by
    reference, and over a group) is zlib's CRC-32 of the whole payload from the file's
    seed: the on-disk format is unchanged, so journals and snapshots written before load
    and these load in a kernelfarm that checks with zlib."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "journal.0")
        log = journal.Journal.create(path, durable=False)
        for head, data, tail in parts:
            log.records.extend(records)
            log.append_parts(head, data, tail)
        log.records.extend(records)
        log.write(room=False)
        log.close_fd()
        raw = Path(path).read_bytes()
    magic_nonce, seed = raw[:12], int.from_bytes(raw[12:16], "little")
    assert zlib.crc32(magic_nonce) == seed
    pos, frames = journal.FILE_HEADER.size, 0
    while pos < len(raw):
        length, crc = journal.HEADER.unpack_from(raw, pos)
        payload = raw[pos + journal.HEADER.size:pos + journal.HEADER.size + length]
        assert zlib.crc32(payload, seed) == crc
        pos += journal.HEADER.size + length
        frames += 1
    assert pos == len(raw)
    assert frames == len(parts) + sum(1 for _ in parts if records) + (1 if records else 0)
    assert journal.frame(b"snapshot record") == (
        journal.HEADER.pack(15, zlib.crc32(b"snapshot record")) + b"snapshot record")


@pytest.mark.parametrize("count", [1, 3, journal.IOV_MAX + 5])
def test_write_at_finishes_short_writes_and_more_buffers_than_one_call_takes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """``pwritev`` may write less than asked (and takes at most IOV_MAX buffers): every
    byte still lands where it belongs.  The first call gets the buffers as they are;
    a short write is finished from views of what is left."""
    buffers = [bytes([i % 251]) * (i % 5) for i in range(count)]  # empty ones too
    calls: list[int] = []
    real = os.pwritev

    def short(fd: int, bufs: list[bytes], offset: int) -> int:
        assert len(bufs) <= journal.IOV_MAX
        calls.append(len(bufs))
        return real(fd, [b"".join(bytes(b) for b in bufs)[:3]], offset)  # 3 bytes at most

    monkeypatch.setattr(os, "pwritev", short)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        journal.write_at(fd, buffers, 10)
    finally:
        os.close(fd)
    expected = b"".join(buffers)
    assert (tmp_path / "f").read_bytes() == (bytes(10) + expected if expected else b"")
    assert len(calls) == -(-len(expected) // 3)  # none for nothing to write
