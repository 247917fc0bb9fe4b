"""Options shared by the client commands, and how they find the control address.

``--control`` and ``--config`` are accepted before or after the verb (``kernelfarm
--control X fs ls /`` and ``kernelfarm fs ls / --control X``): every parser that takes
them leaves them unset unless given (``SUPPRESS``), so a later parser never overwrites an
earlier one's value with its default.  Precedence: ``--control``, then
``$KERNELFARM_CONTROL``, then ``farm.control`` of ``--config`` / ``$KERNELFARM_CONFIG`` (the
file a systemd unit uses), then the built-in default.  The token sent with ``auth.hello`` is
the first of: ``--token-file``, ``$KERNELFARM_TOKEN``, the admin token of the config's data
dir.
"""

from __future__ import annotations

import argparse
import os

from kernelfarm import config as configuration
from kernelfarm.auth.tokens import TOKEN_ENV, find_token
from kernelfarm.client import Client
from kernelfarm.errors import ConfigError
from kernelfarm.hostport import parse_hostport

CONTROL_ENV = "KERNELFARM_CONTROL"
CONFIG_ENV = "KERNELFARM_CONFIG"


def hostport_arg(text: str) -> str:
    """argparse type for HOST:PORT: a bad value is a one-line usage error, not a traceback."""
    try:
        parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def interval_arg(text: str) -> float:
    """argparse type for a refresh interval: a positive, finite number of seconds (-1, nan
    and inf reached ``time.sleep`` and ended ``top`` with a traceback)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.01 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"expected 0.01 to 86400 seconds, got {text!r}")
    return seconds


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", metavar="HOST:PORT", type=hostport_arg,
                        default=argparse.SUPPRESS,
                        help=f"supervisor control address (default: ${CONTROL_ENV}, else "
                             f"farm.control of the config, else "
                             f"{configuration.DEFAULT_CONTROL})")
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"config file to take farm.control from (default: "
                             f"${CONFIG_ENV})")
    parser.add_argument("--token-file", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"file holding the token to send (default: ${TOKEN_ENV}, else "
                             "the admin token of the config's data dir)")


def config_path(args: argparse.Namespace) -> str | None:
    return getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None


def control_address(args: argparse.Namespace) -> tuple[str, int]:
    given = getattr(args, "control", None)
    if given:
        return parse_hostport(given)
    env = os.environ.get(CONTROL_ENV)
    if env:
        try:
            return parse_hostport(env)
        except ValueError as exc:
            raise ConfigError(f"${CONTROL_ENV}: {exc}") from None
    return parse_hostport(configuration.load(config_path(args)).farm.control)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_log_level_option(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` of the commands that run as services (serve, socks)."""
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        help=f"{', '.join(LOG_LEVELS)} (default: $KERNELFARM_LOG, else INFO)")


def log_level(args: argparse.Namespace) -> str:
    level = args.log_level or os.environ.get("KERNELFARM_LOG", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"KERNELFARM_LOG={level!r} is not a log level: choose from "
                          f"{', '.join(LOG_LEVELS)}")
    return str(level)


def client_token(args: argparse.Namespace) -> str | None:
    """``--token-file``, else ``$KERNELFARM_TOKEN``, else ``<data_dir>/admin.token``."""
    data_dir = configuration.load(config_path(args)).farm.data_dir
    try:
        return find_token(getattr(args, "token_file", None), data_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--token-file: {exc}") from None


def connect(args: argparse.Namespace) -> Client:
    """A client for the farm the command's options name, sending their token."""
    return Client(control_address(args), token=client_token(args))
