"""Copying files between this machine and the farm, as ``cp`` and ``rsync`` users expect.

Destinations behave like ``cp``'s: a destination that is a directory (or is written with a
trailing ``/``) receives the source under its own name, and several sources need a
directory.  ``-r`` copies trees.  Files move in chunks well under the RPC message limit:
reads use ``pread``; a small file is one atomic ``write_file``; a larger one is written
beside its target and renamed over it, so readers never see half a file.  Its full size is
set first with ``truncate``, so a file over ``fs.max_file_bytes`` (``EFBIG``) or the
volume's quota (``EDQUOT``) is refused before any data is sent, and every error names the
destination, never the temporary.  Large transfers draw a rich progress bar on a terminal.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import secrets
import stat
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
)

CHUNK = 4 * 1024 * 1024
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
"""Transfers smaller than this finish before a bar would help; they draw none."""


def remote_path(path: str) -> str:
    """``/alice/`` and ``/alice//x`` as ``ls`` takes them: ``/alice``, ``/alice/x``."""
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/"):
        return path  # relative: the farm refuses it with EINVAL, naming it
    return "/" + "/".join(parts)


def join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def named(exc: OSError, path: str) -> OSError:
    """The same error, naming ``path`` (the user's destination, not a temporary)."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, path)


def is_remote_dir(fs: Any, path: str) -> bool:
    try:
        return bool(fs.stat(path)["type"] == "dir")
    except FileNotFoundError:
        return False


class Meter:
    """A progress bar on stderr when the transfer is large and stderr is a terminal."""

    def __init__(self, total: int, label: str, show: bool | None = None) -> None:
        if show is None:
            show = sys.stderr.isatty()
        self.progress: Progress | None = None
        if show and total >= PROGRESS_MIN_BYTES:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), transient=False,
                console=Console(stderr=True))
            self.task = self.progress.add_task(label, total=total)
            self.progress.start()

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# -- uploads ----------------------------------------------------------------------------


@dataclass
class Upload:
    local: str    # a local file, or "-" for stdin
    remote: str   # the farm path it becomes
    link: str | None = None  # a symlink's target: made a symlink, as ``cp -r`` does


def plan_put(fs: Any, sources: list[str], dest: str, recursive: bool
             ) -> tuple[list[str], list[Upload]]:
    """(remote directories to make, files to copy) for ``put SOURCES DEST``."""
    wants_dir = dest.endswith("/") or len(sources) > 1
    dest = remote_path(dest)
    into_dir = is_remote_dir(fs, dest)
    if wants_dir and not into_dir:
        raise NotADirectoryError(20, "Not a directory (several sources, or a trailing /, "
                                 "need an existing directory)", dest)
    dirs: list[str] = []
    files: list[Upload] = []
    for source in sources:
        if source == "-":
            files.append(Upload("-", dest))
            continue
        base = os.path.basename(os.path.normpath(source))
        target = join(dest, base) if into_dir else dest
        if os.path.isdir(source):
            if not recursive:
                raise IsADirectoryError(21, "Is a directory (use -r to copy a tree)", source)
            for top, subdirs, names in os.walk(source):
                subdirs.sort()
                rel = os.path.relpath(top, source)
                here = target if rel == "." else join(target, rel.replace(os.sep, "/"))
                dirs.append(here)
                for name in sorted(names + [d for d in subdirs if os.path.islink(
                        os.path.join(top, d))]):
                    local = os.path.join(top, name)
                    mode = os.lstat(local).st_mode
                    if stat.S_ISLNK(mode):  # broken or not, to a file or a directory
                        files.append(Upload(local, join(here, name), os.readlink(local)))
                    elif stat.S_ISREG(mode):
                        files.append(Upload(local, join(here, name)))
                    else:  # a FIFO would hold the copy forever, a device never end
                        print(f"kernelfarm fs put: skipping {local}: not a file, a "
                              "directory or a symlink", file=sys.stderr)
        else:
            files.append(Upload(source, target))
    return dirs, files


def put(fs: Any, sources: list[str], dest: str, recursive: bool = False,
        show: bool | None = None) -> None:
    dirs, files = plan_put(fs, sources, dest, recursive)
    for directory in dirs:
        try:
            fs.mkdir(directory)
        except FileExistsError:
            if not is_remote_dir(fs, directory):
                raise
    total = sum(os.path.getsize(u.local) for u in files if u.local != "-" and u.link is None)
    meter = Meter(total, f"put {dest}", show)
    try:
        for upload in files:
            if upload.link is not None:
                put_link(fs, upload.remote, upload.link)
            elif upload.local == "-":
                put_stream(fs, sys.stdin.buffer, upload.remote, None, meter)
            else:
                with open(upload.local, "rb") as source:
                    put_stream(fs, source, upload.remote, os.fstat(source.fileno()).st_size,
                               meter)
    finally:
        meter.close()


def put_link(fs: Any, remote: str, target: str) -> None:
    """``remote`` becomes a symlink to ``target``, replacing a file or symlink there."""
    try:
        fs.symlink(remote, target)
    except FileExistsError:
        if is_remote_dir(fs, remote):
            raise
        fs.unlink(remote)
        fs.symlink(remote, target)


def put_stream(fs: Any, source: BinaryIO, remote: str, size: int | None, meter: Meter) -> None:
    """Copy ``source`` to ``remote`` atomically; ``size`` (if known) is checked first."""
    first = source.read(CHUNK)
    more = source.read(CHUNK) if len(first) == CHUNK else b""
    if not more:
        fs.write_file(remote, first)
        meter.advance(len(first))
        return
    temp = f"{remote}.put-{secrets.token_hex(4)}"
    try:
        fs.write_file(temp, b"")
        if size is not None:
            fs.truncate(temp, size)  # EFBIG / EDQUOT now, before any data goes out
        offset = 0
        for chunk in itertools.chain((first, more), _chunks(source)):  # one chunk at a time
            offset += fs.pwrite(temp, offset, chunk)
            meter.advance(len(chunk))
        fs.truncate(temp, offset)  # the source may have shrunk since it was measured
        fs.rename(temp, remote)
    except OSError as exc:
        _discard(fs, temp)
        raise named(exc, remote) from None
    except BaseException:
        _discard(fs, temp)
        raise


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        yield chunk


def _discard(fs: Any, temp: str) -> None:
    try:
        fs.unlink(temp)
    except OSError:
        pass  # never created, or the farm is gone: nothing more to do here


# -- downloads --------------------------------------------------------------------------


def plan_get(fs: Any, sources: list[str], dest: str, recursive: bool
             ) -> tuple[list[str], list[tuple[str, str, int]]]:
    """(local directories to make, (remote, local, size) files) for ``get SOURCES DEST``."""
    into_dir = os.path.isdir(dest)
    if (dest.endswith("/") or len(sources) > 1) and not into_dir:
        raise NotADirectoryError(20, "Not a directory (several sources, or a trailing /, "
                                 "need an existing directory)", dest)
    dirs: list[str] = []
    files: list[tuple[str, str, int]] = []
    for source in map(remote_path, sources):
        st = fs.stat(source)
        target = os.path.join(dest, posixpath.basename(source) or "root") if into_dir \
            else dest
        if st["type"] != "dir":
            files.append((source, target, st["size"]))
            continue
        if not recursive:
            raise IsADirectoryError(21, "Is a directory (use -r to copy a tree)", source)
        stack = [(source, target)]
        while stack:
            remote, local = stack.pop()
            dirs.append(local)
            for name in fs.listdir(remote):
                child = join(remote, name)
                child_st = fs.stat(child)
                if child_st["type"] == "dir":
                    stack.append((child, os.path.join(local, name)))
                elif child_st["type"] == "file":
                    files.append((child, os.path.join(local, name), child_st["size"]))
                else:  # a farm symlink's target is a tenant's text: not made here
                    print(f"kernelfarm fs get: skipping {child}: a symlink",
                          file=sys.stderr)
    return dirs, files


def get(fs: Any, sources: list[str], dest: str, recursive: bool = False,
        show: bool | None = None) -> None:
    if dest == "-":
        for source in sources:
            copy_out(fs, remote_path(source), sys.stdout.buffer, None)
        sys.stdout.buffer.flush()
        return
    dirs, files = plan_get(fs, sources, dest, recursive)
    for directory in dirs:
        os.makedirs(directory, exist_ok=True)
    meter = Meter(sum(size for _, _, size in files), f"get {dest}", show)
    try:
        for remote, local, _ in files:
            partial = f"{local}.part"
            try:
                with open(partial, "wb") as out:
                    copy_out(fs, remote, out, meter)
            except BaseException:  # gone meanwhile, Ctrl-C: no half file left behind
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                raise
            os.replace(partial, local)
    finally:
        meter.close()


def copy_out(fs: Any, path: str, out: BinaryIO, meter: Meter | None) -> None:
    offset = 0
    while True:
        chunk = fs.pread(path, offset, CHUNK)
        out.write(chunk)
        offset += len(chunk)
        if meter is not None:
            meter.advance(len(chunk))
        if len(chunk) < CHUNK:
            return
