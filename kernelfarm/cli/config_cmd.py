"""``kernelfarm config``: print the documented default config, or check config files."""

from __future__ import annotations

import argparse
import sys

from kernelfarm import config as configuration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("config", help="print the default config, or check files",
                            description="Print the documented default config (what "
                                        "config/kernelfarm.toml holds), or check files.")
    parser.add_argument("--check", metavar="FILE", nargs="+",
                        help="validate each FILE and report every error in it")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not args.check:
        print(configuration.render_defaults(), end="")
        return 0
    status = 0
    for path in args.check:
        problems = configuration.check(path)
        for problem in problems:
            print(f"kernelfarm config: {problem.message}", file=sys.stderr)
        if problems:
            status = 2
        else:
            print(f"{path}: ok")
    return status
