"""Sync-behind under a real kernel: an acknowledgement never leaves before the
``fdatasync`` that covers its write has returned, however long the disk takes.

The power-cut file system holds every file fsync on command (``hold-fsync``), as a slow
disk would: the kernel's syncer waits in it while the kernel's loop serves on.  The
kernel's replies travel on a raw connection, so the test sees exactly when each leaves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import msgpack
import pytest

from farmctl import start_farm, wait_until
from powercut_ctl import PowerCut, powercut_fs
from rawpeer import Peer, kernel_addr

ABSENT_S = 0.5
"""How long a reply that must not come is waited for: the reply of a write whose sync has
begun is written before the sync starts when acks do not wait, so it would be here."""


@pytest.fixture
def pc(tmp_path: Path) -> Iterator[PowerCut]:
    with powercut_fs(tmp_path / "powercut") as mounted:
        yield mounted


def counts(pc: PowerCut) -> dict[str, Any]:
    stats: dict[str, Any] = json.loads(pc.command("stats"))
    return stats


def write(peer: Peer, msgid: int, path: str, data: bytes) -> None:
    peer.send(msgpack.packb([0, msgid, "fs.write_file", [path, data]]))


def write_held(pc: PowerCut, peer: Peer, msgid: int, path: str, data: bytes) -> None:
    """Send a write while the disk holds fsyncs; return once its fdatasync is held."""
    held = counts(pc)["fsyncs_held"]
    pc.command("hold-fsync on")
    write(peer, msgid, path, data)
    wait_until(lambda: counts(pc)["fsyncs_held"] > held,
               what=f"the fdatasync of {path}, held by the disk")


def nothing_comes(peer: Peer) -> bool:
    """No reply within :data:`ABSENT_S`, none already read either."""
    for _ in peer.unpacker:
        return False
    peer.sock.settimeout(ABSENT_S)
    try:
        return peer.sock.recv(1 << 16) == b"never"
    except TimeoutError:
        return True
    finally:
        peer.sock.settimeout(30)


def test_an_ack_waits_for_the_fdatasync_that_covers_it(tmp_path: Path,
                                                       pc: PowerCut) -> None:
    with start_farm(tmp_path, 1, data_dir=pc.mount / "data") as farm:
        farm.client().fs.mkdir("/v")
        peer = Peer(kernel_addr(farm.cluster_map()), timeout=30)
        write_held(pc, peer, 1, "/v/first", b"one")
        # Its reply was made before its sync began: it must wait for the sync.
        assert nothing_comes(peer)
        # A write made while that sync is running is not covered by it: its reply
        # waits for a sync of its own, which the disk holds in turn.  (Here its journal
        # write itself waits for the held fsync -- FUSE locks the inode for an fsync --
        # so the syncer's own rule, never answer a request with a sync begun before it
        # came, is tested in tests/kernel/test_syncer.py.)
        write(peer, 2, "/v/second", b"two")
        assert nothing_comes(peer)
        held = counts(pc)["fsyncs_held"]
        pc.command("hold-fsync next")
        assert peer.next_message() == [1, 1, None, None]
        wait_until(lambda: counts(pc)["fsyncs_held"] > held,
                   what="the second write's own fdatasync, held by the disk")
        assert nothing_comes(peer)
        pc.command("hold-fsync off")
        assert peer.next_message() == [1, 2, None, None]
        peer.close()
        pc.power_cut([farm.proc.pid, *(p.pid for p in farm.kernel_procs())])
    with start_farm(tmp_path, 1, data_dir=pc.mount / "data", name="after") as farm:
        client = farm.client()
        assert client.fs.read_file("/v/first") == b"one"
        assert client.fs.read_file("/v/second") == b"two"


def test_a_read_during_a_sync_waits_for_it(tmp_path: Path, pc: PowerCut) -> None:
    """A read may show what the sync in flight is making durable: it is not answered
    before that sync ends (else a reader could see a write that a crash then undoes)."""
    with start_farm(tmp_path, 1, data_dir=pc.mount / "data") as farm:
        farm.client().fs.mkdir("/v")
        writer = Peer(kernel_addr(farm.cluster_map()), timeout=30)
        reader = Peer(kernel_addr(farm.cluster_map()), timeout=30)
        write_held(pc, writer, 1, "/v/f", b"not yet durable")
        reader.send(msgpack.packb([0, 7, "fs.read_file", ["/v/f"]]))
        assert nothing_comes(reader)
        pc.command("hold-fsync off")
        assert writer.next_message() == [1, 1, None, None]
        assert reader.next_message() == [1, 7, None, b"not yet durable"]
        writer.close()
        reader.close()


def test_a_write_whose_sync_a_power_cut_stops_is_never_acknowledged_nor_kept(
        tmp_path: Path, pc: PowerCut) -> None:
    """The power goes while the disk holds a sync: its write was never acknowledged,
    and everything acknowledged before it is there after the restart."""
    with start_farm(tmp_path, 1, data_dir=pc.mount / "data") as farm:
        client = farm.client()
        client.fs.mkdir("/v")
        client.fs.write_file("/v/acked", b"durable")
        peer = Peer(kernel_addr(farm.cluster_map()), timeout=30)
        write_held(pc, peer, 1, "/v/doomed", b"never acknowledged")
        pc.power_cut([farm.proc.pid, *(p.pid for p in farm.kernel_procs())])
        assert peer.next_message() is None  # the connection ended with no ack
        peer.close()
    with start_farm(tmp_path, 1, data_dir=pc.mount / "data", name="after") as farm:
        client = farm.client()
        assert client.fs.read_file("/v/acked") == b"durable"
        with pytest.raises(FileNotFoundError):  # its only fdatasync never returned
            client.fs.read_file("/v/doomed")
