"""Mounts are clients like any other: two mounts of one farm see each other's closed files,
and a live scale-out (volumes moving between kernels) is invisible to programs on a mount:
the client's retries of MOVED and TRYAGAIN stay below the FUSE requests."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Iterator

import pytest
from mountctl import Mount, mounted

from farmctl import Farm, start_farm, wait_until

ATTR_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def two_mounts(farm: Farm, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Mount, Mount]]:
    base = tmp_path_factory.mktemp("two")
    with mounted(farm, base / "a", name="a") as a, mounted(farm, base / "b", name="b") as b:
        yield a, b


def test_two_mounts_see_each_others_closed_files(two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    (a.path / "shared").mkdir()
    assert (b.path / "shared").is_dir()                   # a new name shows at once
    (a.path / "shared" / "f").write_bytes(b"from a")
    assert (b.path / "shared" / "f").read_bytes() == b"from a"
    (b.path / "shared" / "f").write_bytes(b"from b")      # same size: read fresh at open
    assert (a.path / "shared" / "f").read_bytes() == b"from b"
    with open(b.path / "shared" / "f", "ab") as f:         # longer: within attr_timeout
        f.write(b", and more")
    wait_until(lambda: (a.path / "shared" / "f").read_bytes() == b"from b, and more",
               timeout=ATTR_TIMEOUT_S * 5, what="a to see b's longer file")
    os.rename(a.path / "shared" / "f", a.path / "shared" / "g")
    assert (b.path / "shared" / "g").read_bytes() == b"from b, and more"
    wait_until(lambda: not (b.path / "shared" / "f").exists(),
               timeout=ATTR_TIMEOUT_S * 5, what="b to see the rename")
    (b.path / "shared" / "g").unlink()
    wait_until(lambda: os.listdir(a.path / "shared") == [],
               timeout=ATTR_TIMEOUT_S * 5, what="a to see the unlink")


def excl_create(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def test_o_excl_is_exclusive_across_mounts(two_mounts: tuple[Mount, Mount]) -> None:
    """Each mount keeps the names of a directory it made or listed for up to 1 s, so its
    kernel sends the create of a name the other mount has just made: the farm refuses
    it (one exclusive ``fs.create``), and a create without O_EXCL opens the other file."""
    a, b = two_mounts
    (a.path / "excl").mkdir()
    assert os.listdir(b.path / "excl") == []
    (b.path / "excl" / "x").write_bytes(b"from b")
    assert not excl_create(a.path / "excl" / "x")
    os.close(os.open(a.path / "excl" / "x", os.O_CREAT | os.O_WRONLY))
    assert (b.path / "excl" / "x").read_bytes() == b"from b"
    wait_until(lambda: (a.path / "excl" / "x").exists(),
               timeout=ATTR_TIMEOUT_S * 5, what="a to see b's new name")
    # Both mounts race for the same names, each sure (for 1 s) that none exists yet.
    names = [f"n{i}" for i in range(40)]
    os.listdir(a.path / "excl")
    os.listdir(b.path / "excl")
    won: dict[str, list[Path]] = {name: [] for name in names}

    def race(mount: Mount) -> None:
        for name in names:
            if excl_create(mount.path / "excl" / name):
                won[name].append(mount.path)

    threads = [threading.Thread(target=race, args=(mount,)) for mount in (b, a)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(winners) == 1 for winners in won.values()), won
    assert sorted(os.listdir(a.path / "excl")) == sorted(["x", *names])
    with pytest.raises(OSError) as failure:
        os.open(b.path / "excl" / "n0", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert failure.value.errno == errno.EEXIST


def test_a_live_scale_out_is_invisible_through_the_mount(tmp_path: Path) -> None:
    volumes = [f"v{i}" for i in range(40)]
    with start_farm(tmp_path, 1, name="scaling") as farm:
        with mounted(farm, tmp_path / "mp", name="scaling-mount") as mount:
            for name in volumes:
                (mount.path / name).mkdir()
                (mount.path / name / "f").write_bytes(name.encode() * 1000)
            errors: list[BaseException] = []
            rounds = [0]
            stop = threading.Event()

            def work() -> None:
                """What a program does meanwhile: write, rename, read back, list."""
                while not stop.is_set():
                    for name in volumes:
                        d = mount.path / name
                        try:
                            data = f"{name}:{rounds[0]}".encode() * 500
                            (d / "tmp").write_bytes(data)
                            os.rename(d / "tmp", d / "g")
                            assert (d / "g").read_bytes() == data
                            assert (d / "f").read_bytes() == name.encode() * 1000
                            assert sorted(os.listdir(d)) == ["f", "g"]
                        except BaseException as exc:  # reported by the test below
                            errors.append(exc)
                            return
                    rounds[0] += 1

            worker = threading.Thread(target=work)
            worker.start()
            try:
                wait_until(lambda: rounds[0] >= 1 or errors, what="a first round")
                before = rounds[0]
                result = farm.client().scale(2)
                assert result["moved"] > 0
                wait_until(lambda: rounds[0] >= before + 2 or errors, what="more rounds")
            finally:
                stop.set()
                worker.join(timeout=60)
            assert errors == []
            owners = {k["id"] for k in farm.cluster_map()["kernels"]}
            assert len(owners) == 2
