"""``kernelfarm fs ls|stat|cat|put|get|mkdir|rm|rmdir|mv``: the fs for people at a terminal.

Files move in chunks well under the RPC message limit: ``get`` and ``cat`` read with
``pread``; ``put`` of a small file is one atomic ``write_file``, and a larger one is
written beside the target and renamed over it, so readers never see half a file.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any, BinaryIO, Callable

from kernelfarm.cli.common import add_client_options, control_address
from kernelfarm.client import Client
from kernelfarm.errors import KernelfarmError

CHUNK = 4 * 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("fs", help="use the farm's file systems from the shell")
    add_client_options(parser)
    verbs = parser.add_subparsers(dest="fs_command", required=True, metavar="VERB")

    def verb(name: str, help: str, handler: Callable[[argparse.Namespace], int]
             ) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help)
        add_client_options(p)
        p.set_defaults(handler=handler)
        return p

    p = verb("ls", "list a directory (/ lists the volumes)", run_ls)
    p.add_argument("paths", nargs="*", default=["/"], metavar="PATH")
    p.add_argument("-l", action="store_true", dest="long", help="type, mode, size, name")
    p = verb("stat", "show an inode's stat", run_stat)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = verb("cat", "write files to stdout", run_cat)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = verb("put", "copy a local file (- = stdin) to the farm", run_put)
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("remote", metavar="REMOTE")
    p = verb("get", "copy a farm file to a local file (- = stdout)", run_get)
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("local", metavar="LOCAL")
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
    p = verb("mv", "rename within a volume", run_mv)
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")


def _run(args: argparse.Namespace, work: Callable[[Any], None]) -> int:
    """Run ``work(client.fs)``; a failure is one line on stderr and exit status 1."""
    try:
        with Client(control_address(args)) as client:
            work(client.fs)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"kernelfarm fs {args.fs_command}{where}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except (KernelfarmError, ValueError) as exc:
        print(f"kernelfarm fs {args.fs_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _describe(st: dict[str, Any]) -> str:
    return f"{st['type']:<7} {st['mode']:06o} {st['size']:>10}"


def run_ls(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        for path in args.paths:
            if len(args.paths) > 1:
                print(f"{path}:")
            names = fs.listdir(path)
            for name in names:
                if args.long:
                    print(f"{_describe(fs.stat(_join(path, name)))} {name}")
                else:
                    print(name)
    return _run(args, work)


def run_stat(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        for path in args.paths:
            st = fs.stat(path)
            print(f"{path}: type={st['type']} size={st['size']} mode={st['mode']:o} "
                  f"nlink={st['nlink']} ino={st['ino']} mtime_ns={st['mtime_ns']} "
                  f"ctime_ns={st['ctime_ns']}")
    return _run(args, work)


def _copy_out(fs: Any, path: str, out: BinaryIO) -> None:
    offset = 0
    while True:
        chunk = fs.pread(path, offset, CHUNK)
        out.write(chunk)
        offset += len(chunk)
        if len(chunk) < CHUNK:
            return


def run_cat(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        out = sys.stdout.buffer
        for path in args.paths:
            _copy_out(fs, path, out)
        out.flush()
    return _run(args, work)


def run_get(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        if args.local == "-":
            _copy_out(fs, args.remote, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        partial = f"{args.local}.part"
        with open(partial, "wb") as out:
            _copy_out(fs, args.remote, out)
        os.replace(partial, args.local)
    return _run(args, work)


def run_put(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        source = sys.stdin.buffer if args.local == "-" else open(args.local, "rb")
        try:
            first = source.read(CHUNK)
            more = source.read(CHUNK)
            if not more:
                fs.write_file(args.remote, first)
                return
            temp = f"{args.remote}.put-{secrets.token_hex(4)}"
            fs.write_file(temp, first)
            try:
                offset = len(first)
                while more:
                    offset += fs.pwrite(temp, offset, more)
                    more = source.read(CHUNK)
                fs.rename(temp, args.remote)
            except BaseException:
                fs.unlink(temp)
                raise
        finally:
            if source is not sys.stdin.buffer:
                source.close()
    return _run(args, work)


def run_mkdir(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        for path in args.paths:
            if not args.parents:
                fs.mkdir(path)
                continue
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts) + 1):
                prefix = "/" + "/".join(parts[:depth])
                try:
                    fs.mkdir(prefix)
                except FileExistsError:
                    if fs.stat(prefix)["type"] != "dir":
                        raise
    return _run(args, work)


def run_rm(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        for path in args.paths:
            if args.recursive and fs.stat(path)["type"] == "dir":
                _remove_tree(fs, path)
            else:
                fs.unlink(path)
    return _run(args, work)


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
            child = _join(path, name)
            if fs.stat(child)["type"] == "dir":
                stack.append((child, False))
            else:
                fs.unlink(child)


def run_rmdir(args: argparse.Namespace) -> int:
    def work(fs: Any) -> None:
        for path in args.paths:
            fs.rmdir(path)
    return _run(args, work)


def run_mv(args: argparse.Namespace) -> int:
    return _run(args, lambda fs: fs.rename(args.src, args.dst))


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"
