"""Options shared by the client commands, and how they find the control address."""

from __future__ import annotations

import argparse

from kernelfarm import config as configuration
from kernelfarm.hostport import parse_hostport


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", metavar="HOST:PORT",
                        help="supervisor control address (default: from the config)")
    parser.add_argument("--config", metavar="FILE", help="config file to take defaults from")


def control_address(args: argparse.Namespace) -> tuple[str, int]:
    if args.control:
        return parse_hostport(args.control)
    return parse_hostport(configuration.load(args.config).farm.control)
