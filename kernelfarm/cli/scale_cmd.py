"""``kernelfarm scale N``: grow or shrink a running farm, moving as few slots as possible."""

from __future__ import annotations

import argparse

from kernelfarm.cli.common import add_client_options, control_address
from kernelfarm.client import Client


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("scale", help="grow or shrink the farm live")
    parser.add_argument("kernels", type=int, help="the number of kernels wanted")
    add_client_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with Client(control_address(args)) as client:
        result = client.scale(args.kernels)
    print(f"{result['from']} -> {result['to']} kernels: {result['moved']} slots moved in "
          f"{result['seconds']:.2f} s (epoch {result['epoch']})")
    return 0
