"""The ``kernelfarm`` command: one module per verb, each registering its own parser.

Every failure a user can cause ends as one line on stderr naming what was wrong (the
address, the key, the path) and a non-zero status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib import metadata
from typing import Callable

from kernelfarm.cli.common import add_client_options
from kernelfarm.errors import KernelfarmError


def _commands() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    from kernelfarm.cli import (
        bench_cmd, config_cmd, fs_cmd, mount_cmd, scale_cmd, serve, socks_cmd, status,
        tenant_cmd, top_cmd,
    )

    return [serve.register, status.register, top_cmd.register, scale_cmd.register,
            fs_cmd.register, tenant_cmd.register, socks_cmd.register, bench_cmd.register,
            config_cmd.register, mount_cmd.register]


def version() -> str:
    try:
        return metadata.version("kernelfarm")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelfarm",
        description="Serve file-system and network operations from a farm of single-CPU "
                    "kernels.")
    parser.add_argument("--version", action="version", version=f"kernelfarm {version()}")
    add_client_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _commands():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KernelfarmError as exc:
        print(f"kernelfarm: {exc.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kernelfarm fs cat F | head`: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing at exit
        return 128 + signal.SIGPIPE
    except OSError as exc:  # e.g. no daemon at --control: say so, without a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"kernelfarm{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
