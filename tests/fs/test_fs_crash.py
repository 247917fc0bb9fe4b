"""Crash tests through real farms, under ``fsync = "always"`` (the default).

The rule checked everywhere: every write the client saw acknowledged is there afterwards.
A write whose call raised (its connection broke after sending) is unacknowledged: it may
or may not have been applied, and the checks allow both — but nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import kernelfarm
from farmctl import DEADLINE, Farm, gone, spawn_serve, start_farm, stop_process, wait_until
from fs_farmside import volume_on
from kernelfarm.client.routing import RetryPolicy
from kernelfarm.errors import ConnectionLost, TryAgain
from kernelfarm.fs import store
from kernelfarm.partition import key_slot

BOOT_FAILS_FAST = "[supervisor]\nboot_retries = 2\nrestart_backoff = 0.01\n"


# -- writers that record what was acknowledged ----------------------------------------------

class Writer(threading.Thread):
    """Writes to its volumes in a loop with a client of its own, recording every ack.

    Three kinds of write take turns, so each kind of journal record is crash-tested: a new
    file (``write_file``), an append to a log (``pwrite`` at the acknowledged length) and
    an overwrite of one file (``latest``, whose value must be the last acknowledged one or
    a later unacknowledged one).
    """

    def __init__(self, control: tuple[str, int], volumes: list[str], tag: str,
                 tolerate: tuple[type[BaseException], ...],
                 retry: RetryPolicy | None = None) -> None:
        super().__init__(name=f"writer-{tag}")
        self.control, self.volumes, self.tag = control, volumes, tag
        self.tolerate, self.retry = tolerate, retry
        self.files: dict[str, bytes] = {}                   # path -> acked content
        self.log: dict[str, bytes] = {v: b"" for v in volumes}  # acked log content
        self.latest: dict[str, list[bytes]] = {v: [] for v in volumes}  # acked + unacked
        self.latest_acked: dict[str, bytes] = {}
        self.acks: dict[str, int] = {v: 0 for v in volumes}
        self.unacked = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = kernelfarm.Client(self.control, retry=self.retry)
        n = 0
        try:
            while not self.stop.is_set():
                volume = self.volumes[n % len(self.volumes)]
                try:
                    self._write(client, volume, n)
                    self.acks[volume] += 1
                except self.tolerate:
                    self.unacked += 1
                except Exception as exc:  # noqa: BLE001 - any other error fails the test
                    self.errors.append(f"{volume} #{n}: {exc!r}")
                    return
                n += 1
        finally:
            client.close()

    def _write(self, client: kernelfarm.Client, volume: str, n: int) -> None:
        kind = n // len(self.volumes) % 3
        data = f"{self.tag}:{n}".encode()
        if kind == 0:
            path = f"/{volume}/{self.tag}-{n}"
            client.fs.write_file(path, data)
            self.files[path] = data
        elif kind == 1:
            path = f"/{volume}/{self.tag}-log"
            if not self.log[volume]:
                client.fs.write_file(path, b"")  # replaces a log an unacked append began
            client.fs.pwrite(path, len(self.log[volume]), data + b";")
            self.log[volume] += data + b";"
        else:
            self.latest[volume].append(data)  # may be applied from here on
            client.fs.write_file(f"/{volume}/{self.tag}-latest", data)
            self.latest_acked[volume] = data

    def acked_on(self, volumes: list[str]) -> int:
        return sum(self.acks[v] for v in volumes if v in self.acks)

    def verify(self, client: kernelfarm.Client) -> int:
        """Check every acknowledged write against the farm; return how many were checked."""
        assert self.errors == []
        lost = [p for p, data in self.files.items() if client.fs.read_file(p) != data]
        assert lost == []
        for volume, acked in self.log.items():
            if acked:
                assert client.fs.read_file(f"/{volume}/{self.tag}-log")[:len(acked)] == acked
        for volume, acked_latest in self.latest_acked.items():
            now = client.fs.read_file(f"/{volume}/{self.tag}-latest")
            written = self.latest[volume]
            assert now in written[written.index(acked_latest):], (volume, now, acked_latest)
        return sum(self.acks.values())


class Writers:
    def __init__(self, farm: Farm, volumes: list[str], count: int = 2,
                 tolerate: tuple[type[BaseException], ...] = (ConnectionLost,),
                 retry: RetryPolicy | None = None) -> None:
        self.threads = [Writer(farm.control, volumes, f"w{i}", tolerate, retry)
                        for i in range(count)]

    def acked_on(self, volumes: list[str]) -> int:
        return sum(w.acked_on(volumes) for w in self.threads)

    def errors(self) -> list[str]:
        return [e for w in self.threads for e in w.errors]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for thread in self.threads:
            thread.stop.set()
        for thread in self.threads:
            thread.join(DEADLINE)
            assert not thread.is_alive(), f"{thread.name} is stuck"

    def verify(self, farm: Farm) -> int:
        with kernelfarm.Client(farm.control) as client:  # fresh connections
            return sum(w.verify(client) for w in self.threads)


def make_volumes(farm: Farm, per_kernel: int, prefix: str) -> dict[int, list[str]]:
    cmap = farm.cluster_map()
    made = {k["id"]: [volume_on(cmap, k["id"], prefix) for _ in range(per_kernel)]
            for k in cmap["kernels"]}
    client = farm.client()
    for names in made.values():
        for name in names:
            client.fs.mkdir(f"/{name}")
    return made


def running_again(farm: Farm, victim: dict[str, Any]) -> bool:
    kernel = farm.cluster_map()["kernels"][victim["id"]]
    return bool(kernel["pid"] != victim["pid"] and kernel["state"] == "running")


def volume_dir(data_dir: Path, name: str) -> Path:
    return Path(store.slot_dir(data_dir, key_slot(name))) / store.volume_dirname(name)


# -- a. kill -9 of a kernel -------------------------------------------------------------------

def test_acknowledged_writes_survive_kill_9_of_their_kernel(tmp_path: Path) -> None:
    with start_farm(tmp_path, 2) as farm:
        made = make_volumes(farm, 2, "kk")
        volumes = made[0] + made[1]
        with Writers(farm, volumes) as writers:
            for victim in farm.cluster_map()["kernels"]:
                mine = made[victim["id"]]
                before = writers.acked_on(mine)
                wait_until(lambda: writers.acked_on(mine) >= before + 30 or writers.errors(),
                           what="writes to the victim's volumes")
                os.kill(victim["pid"], signal.SIGKILL)
                wait_until(lambda: running_again(farm, victim), what="the kernel to restart")
                after = writers.acked_on(mine)
                wait_until(lambda: writers.acked_on(mine) >= after + 30 or writers.errors(),
                           what="writes to the restarted kernel")
        assert writers.errors() == []
        assert writers.verify(farm) > 100
        assert [k["restarts"] for k in farm.client().status()["kernels"]] == [1, 1]


# -- b. kill -9 of the supervisor, then a new farm on the same data dir ----------------------

@pytest.mark.parametrize("kernels_after", [2, 3])
def test_acknowledged_writes_survive_kill_9_of_the_supervisor(tmp_path: Path,
                                                              kernels_after: int) -> None:
    # After the kill the farm is gone for good: calls fail fast instead of retrying, and
    # fail as a connection does when its server dies: refused, or reset when the connect
    # was still in a dying kernel's accept queue (ECONNRESET: seen once, in a combined suite).
    retry = RetryPolicy(deadline_s=0.5)
    with start_farm(tmp_path, 2) as farm:
        made = make_volumes(farm, 2, "sk")
        writers = Writers(farm, made[0] + made[1],
                          tolerate=(ConnectionLost, ConnectionError, TryAgain),
                          retry=retry)
        with writers:
            wait_until(lambda: min(writers.acked_on(made[0]), writers.acked_on(made[1])) > 40
                       or writers.errors(), what="writes to both kernels")
            pids = [farm.proc.pid, *farm.kernel_pids()]
            farm.proc.kill()
            wait_until(lambda: all(gone(pid) for pid in pids),
                       what="the supervisor and its kernels to exit")
    assert writers.errors() == []
    with start_farm(tmp_path, kernels_after, data_dir=farm.data_dir, name="after") as after:
        assert len(after.cluster_map()["kernels"]) == kernels_after
        assert writers.verify(after) > 80
        everything = set(made[0] + made[1])
        assert everything <= set(after.client().fs.listdir("/"))


# -- c. a kernel that cannot boot ------------------------------------------------------------

def break_slot_dir(data_dir: Path, volume: str) -> None:
    """Replace the directory of the volume's slot with a regular file: unreadable as a slot."""
    slot_path = Path(store.slot_dir(data_dir, key_slot(volume)))
    shutil.rmtree(slot_path)
    slot_path.write_bytes(b"not a directory")


def test_a_kernel_that_cannot_load_its_slots_is_marked_failed(tmp_path: Path) -> None:
    with start_farm(tmp_path, 2) as farm:
        made = make_volumes(farm, 1, "boot")
        client = farm.client()
        for names in made.values():
            client.fs.write_file(f"/{names[0]}/f", b"before")
    break_slot_dir(farm.data_dir, made[1][0])

    with start_farm(tmp_path, 2, config_text=BOOT_FAILS_FAST, data_dir=farm.data_dir,
                    name="broken") as broken:
        kernels = broken.cluster_map()["kernels"]
        assert [k["state"] for k in kernels] == ["running", "failed"]
        assert "kernel 1 marked failed after 2 failed boots" in broken.log()
        assert "NotADirectoryError" in broken.log()
        client = broken.client()
        healthy = made[0][0]
        assert client.fs.read_file(f"/{healthy}/f") == b"before"
        client.fs.write_file(f"/{healthy}/g", b"still serving")
        assert client.fs.read_file(f"/{healthy}/g") == b"still serving"
        assert healthy in client.fs.listdir("/")
        # The failed kernel's volumes are refused at once, never left hanging.
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError, match="has failed"):
            client.fs.read_file(f"/{made[1][0]}/f")
        assert time.monotonic() - started < 5.0


def test_the_daemon_exits_1_when_every_kernel_fails_to_boot(tmp_path: Path) -> None:
    with start_farm(tmp_path, 2) as farm:
        made = make_volumes(farm, 1, "allfail")
    for names in made.values():
        break_slot_dir(farm.data_dir, names[0])

    proc, _, log_path = spawn_serve(tmp_path, "--kernels", "2", config_text=BOOT_FAILS_FAST,
                                    data_dir=farm.data_dir, name="allfail")
    try:
        assert proc.wait(timeout=DEADLINE) == 1
        assert proc.stdout is not None and proc.stdout.read() == b""  # never ready
    finally:
        stop_process(proc)
    log = log_path.read_text()
    assert "every kernel failed to boot" in log
    assert "kernel 0 marked failed" in log and "kernel 1 marked failed" in log


# -- d. a damaged last journal record -------------------------------------------------------

FRAME = struct.Struct("<II")  # length, CRC-32: the journal's record header
FILE_HEADER = 16  # b"KFJ2", nonce, CRC: a format-2 journal's first bytes


def record_spans(journal: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of each record, read independently of the code under test: from
    the file header to the zeros kept ahead of the log."""
    assert journal[:4] == b"KFJ2"
    spans, pos = [], FILE_HEADER
    while pos < len(journal):
        length, _ = FRAME.unpack_from(journal, pos)
        if length == 0:
            break
        spans.append((pos, pos + FRAME.size + length))
        pos += FRAME.size + length
    assert journal[pos:] == bytes(len(journal) - pos), \
        "the journal of a cleanly stopped farm is whole"
    return spans


@pytest.mark.parametrize("damage", ["torn", "torn in place", "bad checksum"])
def test_a_damaged_last_journal_record_loses_only_that_record(tmp_path: Path,
                                                              damage: str) -> None:
    """``torn``: the file ends inside the record; ``torn in place``: the record's second
    half is zeros, as a power cut leaves a write into the preallocated room."""
    with start_farm(tmp_path, 2) as farm:
        made = make_volumes(farm, 1, "torn")
        volume, other = made[1][0], made[0][0]
        client = farm.client()
        for i in range(10):
            client.fs.write_file(f"/{volume}/f{i}", bytes([i]) * (i + 1))
        client.fs.write_file(f"/{other}/keep", b"other volume")
        client.fs.write_file(f"/{volume}/last", b"L" * 100)

    (journal,) = volume_dir(farm.data_dir, volume).glob("journal.*")
    content = journal.read_bytes()
    start, end = record_spans(content)[-1]
    middle = (start + end) // 2
    if damage == "torn":
        journal.write_bytes(content[:middle])
    elif damage == "torn in place":
        journal.write_bytes(content[:middle] + bytes(len(content) - middle))
    else:
        flipped = bytearray(content)
        flipped[end - 1] ^= 0xFF
        journal.write_bytes(bytes(flipped))

    with start_farm(tmp_path, 2, data_dir=farm.data_dir, name="recovered") as again:
        client = again.client()
        for i in range(10):
            assert client.fs.read_file(f"/{volume}/f{i}") == bytes([i]) * (i + 1)
        with pytest.raises(FileNotFoundError):
            client.fs.stat(f"/{volume}/last")
        assert client.fs.read_file(f"/{other}/keep") == b"other volume"
        assert journal.stat().st_size == start  # the damaged tail was cut
        client.fs.write_file(f"/{volume}/after", b"written after recovery")

    # What was appended after the cut is read back too (it did not land behind garbage).
    with start_farm(tmp_path, 2, data_dir=farm.data_dir, name="third") as third:
        client = third.client()
        assert client.fs.read_file(f"/{volume}/after") == b"written after recovery"
        assert client.fs.read_file(f"/{volume}/f9") == bytes([9]) * 10
