"""``kernelfarm status``: one row per kernel, read from the supervisor's control API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from kernelfarm.cli.common import add_client_options, control_address
from kernelfarm.client import Client


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("status", help="show the kernels of a running farm")
    add_client_options(parser)
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    parser.set_defaults(handler=run)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def render(status: dict[str, Any]) -> Table:
    table = Table(title=f"kernelfarm · {status['mode']} · epoch {status['epoch']} · "
                        f"supervisor pid {status['pid']}")
    for column in ("id", "pid", "core", "slots", "volumes", "sockets", "ops/s", "memory",
                   "restarts", "state"):
        table.add_column(column, justify="left" if column == "state" else "right",
                         no_wrap=True)
    for row in status["kernels"]:
        stats = row.get("stats", {})
        subsystems = stats.get("subsystems", {})
        table.add_row(
            str(row["id"]), str(row.get("pid") or "-"), str(row["core"]), str(row["slots"]),
            str(subsystems.get("fs", {}).get("volumes", "-")),
            str(subsystems.get("net", {}).get("sockets", "-")),
            f"{row.get('ops_per_s', 0):,.0f}",
            _mib(stats["memory_rss"]) if "memory_rss" in stats else "-",
            str(row["restarts"]), row["state"] if "error" not in row
            else f"{row['state']} ({row['error']})")
    return table


def run(args: argparse.Namespace) -> int:
    with Client(control_address(args)) as client:
        status = client.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    # Piped output (a log, a script) is not squeezed to 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=140)
    console.print(render(status))
    migration = status.get("migration")
    if migration:
        console.print(f"scaling {migration['from']} -> {migration['to']} kernels: "
                      f"{migration['slots_moved']}/{migration['slots_total']} slots moved")
    return 0
