"""``kernelfarm serve``: run the daemon in the foreground (systemd style)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvloop

from kernelfarm import config as configuration
from kernelfarm.errors import ConfigError
from kernelfarm.supervisor.supervisor import Supervisor, print_ready


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("serve", help="run the daemon in the foreground")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config (default: built-in defaults, as config/kernelfarm.toml)")
    parser.add_argument("--kernels", help='number of kernels, or "auto" (one per core)')
    parser.add_argument("--mode", choices=["partitioned", "locked"])
    parser.add_argument("--threads", help="worker threads in locked mode")
    parser.add_argument("--locking", choices=["global", "fine"])
    parser.add_argument("--data-dir", metavar="DIR")
    parser.add_argument("--control", metavar="HOST:PORT")
    parser.add_argument("--log-level", default=os.environ.get("KERNELFARM_LOG", "INFO"))
    parser.set_defaults(handler=run)


def _count(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'expected a number or "auto", got {value!r}') from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s supervisor %(levelname)s %(message)s")
    os.environ["KERNELFARM_LOG"] = args.log_level.upper()  # kernels log at the same level
    config = configuration.load(args.config, {"farm": {
        "kernels": _count(args.kernels), "mode": args.mode, "threads": _count(args.threads),
        "locking": args.locking, "data_dir": args.data_dir, "control": args.control}})
    return uvloop.run(Supervisor(config).run(print_ready))
