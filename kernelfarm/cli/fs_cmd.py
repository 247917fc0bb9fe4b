"""``kernelfarm fs ls|stat|cat|put|get|du|mkdir|rm|rmdir|mv``: the fs for people at a terminal.

Paths behave as ``ls``, ``cp`` and ``mv`` users expect: a trailing ``/`` is fine, a
directory destination receives the source under its own name, ``-r`` copies trees (see
:mod:`kernelfarm.cli.transfer`).  A command given several paths goes on past one that
fails, reports each failure on one line, and exits 1, as coreutils do.
"""

from __future__ import annotations

import argparse
import posixpath
import stat as statmod
import sys
import time
from typing import Any, Callable

from kernelfarm.cli import transfer
from kernelfarm.cli.common import add_client_options, connect
from kernelfarm.cli.transfer import join, remote_path
from kernelfarm.errors import KernelfarmError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("fs", help="use the farm's file systems from the shell")
    add_client_options(parser)
    verbs = parser.add_subparsers(dest="fs_command", required=True, metavar="VERB")

    def verb(name: str, help: str, handler: Callable[[argparse.Namespace], int]
             ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = verbs.add_parser(name, help=help, description=help)
        add_client_options(p)
        p.set_defaults(handler=handler)
        return p

    p = verb("ls", "list directories (/ lists the volumes)", run_ls)
    p.add_argument("paths", nargs="*", default=["/"], metavar="PATH")
    p.add_argument("-l", action="store_true", dest="long", help="mode, size, time, name")
    p = verb("stat", "show what a path is: type, size, mode, times", run_stat)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = verb("cat", "write files to stdout", run_cat)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = verb("put", "copy local files (- = stdin) to the farm, like cp", run_put)
    p.add_argument("local", nargs="+", metavar="LOCAL")
    p.add_argument("remote", metavar="REMOTE", help="a farm path, or a directory to copy into")
    p.add_argument("-r", action="store_true", dest="recursive", help="copy directories")
    p = verb("get", "copy farm files to local files (- = stdout), like cp", run_get)
    p.add_argument("remote", nargs="+", metavar="REMOTE")
    p.add_argument("local", metavar="LOCAL", help="a local path, or a directory to copy into")
    p.add_argument("-r", action="store_true", dest="recursive", help="copy directories")
    p = verb("du", "bytes used by files under each path", run_du)
    p.add_argument("paths", nargs="*", default=["/"], metavar="PATH")
    p.add_argument("-H", "--human", action="store_true", help="sizes as 1.5K, 2.0M, ...")
    p = verb("mkdir", "make directories (/NAME makes a volume)", run_mkdir)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-p", action="store_true", dest="parents",
                   help="make parents as needed; no error if it exists")
    p = verb("rm", "remove files and symlinks", run_rm)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-r", action="store_true", dest="recursive",
                   help="remove directories and their contents")
    p = verb("rmdir", "remove empty directories (/NAME removes an empty volume)", run_rmdir)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = verb("mv", "rename within a volume; into DST if it is a directory", run_mv)
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")


def _report(args: argparse.Namespace, exc: Exception) -> None:
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
    else:
        message = str(exc)
    print(f"kernelfarm fs {args.fs_command}: {message}", file=sys.stderr)


def _run(args: argparse.Namespace, work: Callable[[Any], None]) -> int:
    """Run ``work(client.fs)``; a failure is one line on stderr and exit status 1."""
    try:
        with connect(args) as client:
            work(client.fs)
    except BrokenPipeError:
        raise  # the reader of stdout is gone: the command's end, not a path's failure
    except (OSError, KernelfarmError, ValueError) as exc:
        _report(args, exc)
        return 1
    return 0


def _each(args: argparse.Namespace, paths: list[str], one: Callable[[Any, str], None]) -> int:
    """``one(fs, path)`` for every path, going on past failures; 1 if any failed."""
    failed = False

    def work(fs: Any) -> None:
        nonlocal failed
        for path in paths:
            try:
                one(fs, remote_path(path))
            except BrokenPipeError:
                raise
            except (OSError, KernelfarmError, ValueError) as exc:
                _report(args, exc)
                failed = True
    status = _run(args, work)
    return 1 if failed else status


def describe(st: dict[str, Any]) -> str:
    """``drwxr-xr-x   1234 2026-11-30 14:05``: what ``ls -l`` shows."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st["mtime_ns"] / 1e9))
    return f"{statmod.filemode(st['mode'])} {st['size']:>10} {when}"


def run_ls(args: argparse.Namespace) -> int:
    def one(fs: Any, path: str) -> None:
        st = fs.stat(path) if path != "/" else {"type": "dir"}
        names = fs.listdir(path) if st["type"] == "dir" else None
        if len(args.paths) > 1:
            print(f"{path}:")
        if names is None:  # a file lists as itself, as ls does
            print(f"{describe(st)} {path}" if args.long else path)
            return
        for name in names:
            print(f"{describe(fs.stat(join(path, name)))} {name}" if args.long else name)
    return _each(args, args.paths, one)


def _stamp(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + \
        f".{rest:09d} " + time.strftime("%z", time.localtime(seconds))


def run_stat(args: argparse.Namespace) -> int:
    def one(fs: Any, path: str) -> None:
        st = fs.stat(path)
        mode = st["mode"]
        print(f"  File: {path}\n"
              f"  Type: {st['type']:<10} Size: {st['size']:<12} Links: {st['nlink']}\n"
              f"  Mode: ({statmod.S_IMODE(mode):04o}/{statmod.filemode(mode)})  "
              f"Inode: {st['ino']}\n"
              f"Modify: {_stamp(st['mtime_ns'])}\n"
              f"Change: {_stamp(st['ctime_ns'])}")
    return _each(args, args.paths, one)


def run_cat(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer

    def one(fs: Any, path: str) -> None:
        transfer.copy_out(fs, path, out, None)
        out.flush()
    return _each(args, args.paths, one)


def run_put(args: argparse.Namespace) -> int:
    return _run(args, lambda fs: transfer.put(fs, args.local, args.remote, args.recursive))


def run_get(args: argparse.Namespace) -> int:
    return _run(args, lambda fs: transfer.get(fs, args.remote, args.local, args.recursive))


def human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def disk_usage(fs: Any, top: str) -> int:
    """Bytes of every file under ``top`` (a file: its own size); no recursion limit."""
    st = fs.stat(top) if top != "/" else {"type": "dir"}
    if st["type"] != "dir":
        return int(st["size"])
    total = 0
    stack = [top]
    while stack:
        path = stack.pop()
        for name in fs.listdir(path):
            child = join(path, name)
            child_st = fs.stat(child)
            if child_st["type"] == "dir":
                stack.append(child)
            elif child_st["type"] == "file":
                total += child_st["size"]
    return total


def run_du(args: argparse.Namespace) -> int:
    def one(fs: Any, path: str) -> None:
        used = disk_usage(fs, path)
        print(f"{human(used) if args.human else used}\t{path}")
    return _each(args, args.paths, one)


def run_mkdir(args: argparse.Namespace) -> int:
    def one(fs: Any, path: str) -> None:
        if not args.parents:
            fs.mkdir(path)
            return
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:depth])
            try:
                fs.mkdir(prefix)
            except FileExistsError:
                if fs.stat(prefix)["type"] != "dir":
                    raise
    return _each(args, args.paths, one)


def is_root(path: str) -> bool:
    """``/``, ``//``, ``/.``, ``/vol/..``: every spelling of the farm's root."""
    return posixpath.normpath(path).strip("/") == ""


def run_rm(args: argparse.Namespace) -> int:
    if args.recursive:
        roots = [path for path in args.paths if is_root(path)]
        if roots:
            # GNU rm's --preserve-root: '/' here is every volume of every kernel.
            print(f"kernelfarm fs rm: refusing to remove '/' ({roots[0]} is every volume of "
                  "the farm); remove volumes one at a time: kernelfarm fs rm -r /VOLUME",
                  file=sys.stderr)
            return 1

    def one(fs: Any, path: str) -> None:
        if args.recursive and fs.stat(path)["type"] == "dir":
            _remove_tree(fs, path)
        else:
            fs.unlink(path)
    return _each(args, args.paths, one)


def _remove_tree(fs: Any, top: str) -> None:
    """Depth first without recursion: paths nest deeper than Python's recursion limit."""
    stack = [(top, False)]
    while stack:
        path, listed = stack.pop()
        if listed:
            fs.rmdir(path)
            continue
        stack.append((path, True))
        for name in fs.listdir(path):
            child = join(path, name)
            if fs.stat(child)["type"] == "dir":
                stack.append((child, False))
            else:
                fs.unlink(child)


def run_rmdir(args: argparse.Namespace) -> int:
    return _each(args, args.paths, lambda fs, path: fs.rmdir(path))


def run_mv(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        src, dst = remote_path(args.src), remote_path(args.dst)
        if transfer.is_remote_dir(fs, dst) and src.rstrip("/") != dst:
            dst = join(dst, src.rsplit("/", 1)[-1])
        fs.rename(src, dst)
    return _run(args, work)
