"""The ``kernelfarm`` command: one module per verb, each registering its own parser."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from kernelfarm.errors import KernelfarmError


def _commands() -> list[Callable[[argparse._SubParsersAction], None]]:  # type: ignore[type-arg]
    from kernelfarm.cli import (
        bench_cmd, config_cmd, fs_cmd, mount_cmd, scale_cmd, serve, status,
    )

    return [serve.register, status.register, scale_cmd.register, fs_cmd.register,
            bench_cmd.register, config_cmd.register, mount_cmd.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelfarm",
        description="Serve file-system and network operations from a farm of single-CPU "
                    "kernels.")
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
    except OSError as exc:  # e.g. no daemon at --control: say so, without a traceback
        print(f"kernelfarm: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
