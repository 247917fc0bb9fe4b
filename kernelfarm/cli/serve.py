"""``kernelfarm serve``: run the daemon in the foreground (systemd style)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import uvloop

from kernelfarm import config as configuration
from kernelfarm.cli.common import (
    CONFIG_ENV, add_log_level_option, config_path, hostport_arg, log_level,
)
from kernelfarm.errors import ConfigError
from kernelfarm.supervisor.supervisor import Supervisor, print_ready



def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("serve", help="run the daemon in the foreground",
                            description="Run the supervisor and its kernels until SIGTERM or "
                                        "Ctrl-C. Flags override the config file.")
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"TOML config (default: ${CONFIG_ENV}, else the built-in "
                             "defaults, as in config/kernelfarm.toml)")
    parser.add_argument("--kernels", metavar="N|auto",
                        help='number of kernels, or "auto" (one per allowed core)')
    parser.add_argument("--mode", choices=["partitioned", "locked"],
                        help="partitioned: N single-CPU kernels; locked: the baseline, one "
                             "kernel with --threads threads under locks")
    parser.add_argument("--threads", metavar="N|auto",
                        help='worker threads in locked mode, or "auto" (one per core)')
    parser.add_argument("--locking", choices=["global", "fine"],
                        help="locked mode: one big lock, or per-volume/per-namespace locks")
    parser.add_argument("--data-dir", metavar="DIR", help="where the kernels keep their data")
    parser.add_argument("--control", metavar="HOST:PORT", type=hostport_arg,
                        default=argparse.SUPPRESS,
                        help="address of the control API (port 0: any free port)")
    parser.add_argument("--metrics", metavar="HOST:PORT|off", type=_metrics_arg,
                        help="address of the Prometheus endpoint, or off")
    add_log_level_option(parser)
    parser.set_defaults(handler=run)


def _metrics_arg(text: str) -> str:
    return text if text == "off" else hostport_arg(text)


def _count(value: str | None, flag: str) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'{flag} expects a number or "auto", got {value!r}') from None


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """What the flags override, section by section (``None`` = not given)."""
    metrics: dict[str, Any] = {}
    if args.metrics == "off":
        metrics["enabled"] = False
    elif args.metrics is not None:
        metrics.update(enabled=True, listen=args.metrics)
    return {
        "farm": {"kernels": _count(args.kernels, "--kernels"), "mode": args.mode,
                 "threads": _count(args.threads, "--threads"), "locking": args.locking,
                 "data_dir": args.data_dir,
                 "control": getattr(args, "control", None)},
        "metrics": metrics,
    }


def run(args: argparse.Namespace) -> int:
    level = log_level(args)
    config = configuration.load(config_path(args), overrides(args))
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s supervisor %(levelname)s %(message)s")
    os.environ["KERNELFARM_LOG"] = level  # kernels log at the same level
    return uvloop.run(Supervisor(config).run(print_ready))
