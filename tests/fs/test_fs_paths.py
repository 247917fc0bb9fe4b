"""Hostile paths: refused with the right errno, and nothing outside a volume is touched."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from fs_harness import FakeKernel

from kernelfarm.fs import store
from kernelfarm.fs import paths
from kernelfarm.fs.paths import parse, routing_key, volume_of
from kernelfarm.partition import key_slot

HOSTILE = [
    ("", errno.EINVAL),
    ("relative/path", errno.EINVAL),
    ("v/f", errno.EINVAL),
    ("/v/../etc/passwd", errno.EINVAL),
    ("/../etc/passwd", errno.EINVAL),
    ("/..", errno.EINVAL),
    ("/.", errno.EINVAL),
    ("/v/.", errno.EINVAL),
    ("/v/./f", errno.EINVAL),
    ("/v/..", errno.EINVAL),
    ("//etc/passwd", errno.EINVAL),
    ("/v//f", errno.EINVAL),
    ("/v/f/", errno.EINVAL),
    ("/v/", errno.EINVAL),
    ("/v/f\0.txt", errno.EINVAL),
    ("/v\0/f", errno.EINVAL),
    ("/v/\udcff", errno.EINVAL),  # a lone surrogate: not UTF-8
    ("/v/" + "n" * 256, errno.ENAMETOOLONG),
    ("/v/" + "é" * 128, errno.ENAMETOOLONG),  # 128 characters, 256 bytes
    ("/" + "v" * 256, errno.ENAMETOOLONG),
    ("/v" + "/d" * 2047, errno.ENAMETOOLONG),  # 4096 bytes
]

PATH_METHODS = [
    ("fs.mkdir",), ("fs.rmdir",), ("fs.listdir",), ("fs.stat",), ("fs.read_file",),
    ("fs.write_file", b"x"), ("fs.pread", 0, 10), ("fs.pwrite", 0, b"x"),
    ("fs.truncate", 0), ("fs.unlink",), ("fs.fsync",), ("fs.symlink", "target"),
    ("fs.readlink",), ("fs.chmod", 0o777), ("fs.utime", 0),
]


def host_files(root: Path) -> dict[str, bytes | None]:
    """Everything under ``root``: path -> content (None for directories)."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.join(dirpath, name)] = None
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                found[os.path.join(dirpath, name)] = fh.read()
    return found


@pytest.mark.parametrize(("path", "code"), HOSTILE)
def test_parse_refuses_hostile_paths(path: str, code: int) -> None:
    with pytest.raises(OSError) as info:
        parse(path)
    assert info.value.errno == code


def test_parse_accepts_the_limits_exactly() -> None:
    assert parse("/") == (None, ())
    assert parse("/v") == ("v", ())
    assert parse("/v/a b/.hidden/...") == ("v", ("a b", ".hidden", "..."))
    assert parse("/v/" + "é" * 127 + "e") == ("v", ("é" * 127 + "e",))  # 255 bytes
    longest = "/v" + "/d" * 2045 + "/xy"  # 4095 bytes
    assert len(longest) == 4095 and parse(longest)[1][-1] == "xy"
    for bad in (None, b"/v/f", 7, ["/v"]):
        with pytest.raises(OSError) as info:
            parse(bad)
        assert info.value.errno == errno.EINVAL


def test_volume_of_is_the_first_component() -> None:
    assert volume_of("/alice/src/a.c") == "alice"
    assert volume_of("/alice") == "alice"
    assert volume_of("/") is None
    assert volume_of("//x") is None
    assert volume_of("relative") is None
    assert volume_of(b"/v") is None
    assert volume_of(None) is None


class Remembering(dict[str, paths.Parsed]):
    """``paths.remembered`` that counts what is stored in it: one store per parse."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[str] = []

    def __setitem__(self, path: str, parsed: paths.Parsed) -> None:
        self.stored.append(path)
        super().__setitem__(path, parsed)


def test_a_path_is_parsed_once_for_the_key_and_the_handler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Counted where parsing leaves its result, not by patching _parse: compiled
    # (kernelfarm.accel), paths calls its own functions directly.
    remembered = Remembering()
    monkeypatch.setattr(paths, "remembered", remembered)
    assert routing_key(["/once/a/b"]) == "once"
    assert remembered.stored == ["/once/a/b"]  # the kernel's key function parsed it ...
    assert parse("/once/a/b") == ("once", ("a", "b"))
    assert routing_key(["/once/a/b"]) == "once"
    assert remembered.stored == ["/once/a/b"]  # ... and the handler and the next request did not


def test_the_routing_key_of_a_refused_path_is_the_clients_key() -> None:
    for path, _code in HOSTILE:
        assert routing_key([path]) == volume_of(path)
    assert routing_key([]) is None
    assert routing_key([["/v"]]) is None  # unhashable: no key, the handler refuses it
    with pytest.raises(OSError):
        parse("/v//f")  # a refused path is never remembered as parsed


def test_remembered_paths_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "remembered", {})
    for index in range(paths.REMEMBERED_MAX * 2 + 3):
        parse(f"/v/f{index}")
    assert 0 < len(paths.remembered) <= paths.REMEMBERED_MAX


def test_remembered_paths_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths of up to 4 KiB are valid: kept by count alone, 8,192 of them would hold
    32 MiB.  Long ones are parsed (rightly) and not kept, so the memory is bounded by
    its count of short strings; a short path is still parsed once."""
    monkeypatch.setattr(paths, "remembered", {})
    long_name = "d" * paths.NAME_MAX
    for index in range(64):
        path = f"/v{index}/" + "/".join([long_name] * 15)  # 3.8 KiB
        assert len(path.encode()) < paths.PATH_MAX
        assert routing_key([path]) == f"v{index}"
        assert parse(path) == (f"v{index}", (long_name,) * 15)
    short = "/v/" + "s" * (paths.KEPT_PATH_CHARS - 3)
    assert parse(short) == ("v", ("s" * (paths.KEPT_PATH_CHARS - 3),))
    assert list(paths.remembered) == [short]
    assert sum(map(len, paths.remembered)) <= len(paths.remembered) * paths.KEPT_PATH_CHARS


def test_every_method_refuses_every_hostile_path_and_touches_nothing(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "data")
    kernel.api.mkdir("/v")
    kernel.api.mkdir("/v/d")
    kernel.api.write_file("/v/f", b"precious")
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0")
    before = host_files(tmp_path)
    # A lone surrogate cannot even be packed by a client (parse's own test covers it).
    for path, code in [(p, c) for p, c in HOSTILE if "\udcff" not in p]:
        for method, *rest in PATH_METHODS:
            assert kernel.errno_of(method, path, *rest) == code, (method, path)
        assert kernel.errno_of("fs.rename", path, "/v/g") == code, path
        assert kernel.errno_of("fs.rename", "/v/f", path) == code, path
    assert host_files(tmp_path) == before
    assert kernel.api.read_file("/v/f") == b"precious"
    kernel.close()


NASTY_BUT_VALID = ["...", ".hidden", "-rf", "a b", "back\\slash", "%2e%2e", "new\nline",
                   "ünïcödé", "CON", "tab\t", "x" * 255, "é" * 127]


@pytest.mark.parametrize("name", NASTY_BUT_VALID)
def test_odd_names_stay_inside_their_volume_directory(tmp_path: Path, name: str) -> None:
    data_dir = tmp_path / "data"
    kernel = FakeKernel(data_dir)
    kernel.api.mkdir(f"/{name}")
    kernel.api.mkdir(f"/{name}/{name}")
    kernel.api.write_file(f"/{name}/{name}/{name}", b"content")
    kernel.api.symlink(f"/{name}/link", f"../../{name}")
    kernel.close()
    volume_dir = Path(store.slot_dir(data_dir, key_slot(name))) / store.volume_dirname(name)
    digest = hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
    assert volume_dir.name.endswith(digest) and len(volume_dir.name) <= 57
    assert set(volume_dir.name) <= store.SAFE_CHARS
    # Only the volume's own files exist on the host: no user name became a host path.
    assert sorted(host_files(tmp_path)) == sorted(map(str, [
        data_dir, data_dir / "fs", volume_dir.parent, volume_dir,
        volume_dir / "VOLUME", volume_dir / "journal.0", volume_dir / "snapshot"]))
    kernel.start()
    assert kernel.api.read_file(f"/{name}/{name}/{name}") == b"content"
    assert kernel.api.listdir("/") == [name]
    kernel.close()
