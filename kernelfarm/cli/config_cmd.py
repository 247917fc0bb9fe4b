"""``kernelfarm config``: print the documented default config, or check a config file."""

from __future__ import annotations

import argparse

from kernelfarm import config as configuration


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("config", help="print the default config, or check a file")
    parser.add_argument("--check", metavar="FILE", help="validate FILE and report errors")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.check:
        configuration.load(args.check)  # raises ConfigError naming the key
        print(f"{args.check}: ok")
    else:
        print(configuration.render_defaults(), end="")
    return 0
