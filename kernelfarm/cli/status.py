"""``kernelfarm status``: one row per kernel, read from the supervisor's control API.

The table fits the terminal: at 80 columns it drops the least useful columns first
(restarts, core, pid) instead of cutting cells.  ``--watch`` is :mod:`kernelfarm.cli.top_cmd`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from kernelfarm.cli.common import add_client_options, connect, interval_arg

COLUMNS = ("id", "address", "pid", "core", "slots", "volumes", "sockets", "ops/s", "memory",
           "restarts", "state")
DROP_ORDER = ("restarts", "core", "pid", "sockets", "volumes")
"""Columns given up, in this order, when the terminal is too narrow for all of them."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="show the kernels of a running farm")
    add_client_options(parser)
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    parser.add_argument("--watch", action="store_true",
                        help="keep watching (the same live view as `kernelfarm top`)")
    parser.add_argument("--interval", type=interval_arg, default=1.0, metavar="S",
                        help="seconds between refreshes with --watch (default 1)")
    parser.set_defaults(handler=run)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}M"


def address(addr: list[Any] | None) -> str:
    if not addr:
        return "-"
    host, port = addr
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def state_of(row: dict[str, Any]) -> str:
    return row["state"] if "error" not in row else f"{row['state']} (no stats)"


def cells(row: dict[str, Any]) -> dict[str, str]:
    stats = row.get("stats", {})
    subsystems = stats.get("subsystems", {})
    return {
        "id": str(row["id"]), "address": address(row.get("addr")),
        "pid": str(row.get("pid") or "-"), "core": str(row["core"]),
        "slots": str(row["slots"]),
        "volumes": str(subsystems.get("fs", {}).get("volumes", "-")),
        "sockets": str(subsystems.get("net", {}).get("sockets", "-")),
        "ops/s": f"{row.get('ops_per_s', 0):,.0f}",
        "memory": mib(stats["memory_rss"]) if "memory_rss" in stats else "-",
        "restarts": str(row["restarts"]), "state": state_of(row),
    }


def fit(title: str, columns: tuple[str, ...], rows: list[dict[str, str]], width: int,
        drop_order: tuple[str, ...], footer: dict[str, str] | None = None) -> Table:
    """A table of ``rows`` that fits ``width``: columns in ``drop_order`` go first."""
    shown = list(columns)
    for column in (None, *drop_order):
        if column is not None:
            shown.remove(column)
        table = _table(title, shown, rows, footer)
        if Console(width=10_000).measure(table).maximum <= width:
            return table
    return table


def _table(title: str, shown: list[str], rows: list[dict[str, str]],
           footer: dict[str, str] | None) -> Table:
    table = Table(title=title, show_footer=footer is not None, title_justify="left")
    for column in shown:
        table.add_column(column, justify="left" if column in ("address", "state") else "right",
                         no_wrap=True, footer=(footer or {}).get(column, ""))
    for row in rows:
        table.add_row(*(row[c] for c in shown))
    return table


def title_of(status: dict[str, Any]) -> str:
    """Mode, epoch, supervisor, and how many modules the kernels run compiled (if any:
    the optional accelerator, :mod:`kernelfarm.accel`)."""
    compiled = max((len(row.get("stats", {}).get("compiled", ()))
                    for row in status["kernels"]), default=0)
    return (f"kernelfarm · {status['mode']} · epoch {status['epoch']} · "
            f"supervisor pid {status['pid']}"
            + (f" · {compiled} modules compiled" if compiled else ""))


def render(status: dict[str, Any], width: int = 80) -> Table:
    return fit(title_of(status), COLUMNS, [cells(r) for r in status["kernels"]], width,
               DROP_ORDER)


def console() -> Console:
    # Piped output (a log, a script) is not squeezed to 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=140)


def run(args: argparse.Namespace) -> int:
    if args.watch:
        from kernelfarm.cli import top_cmd

        return top_cmd.run(args)
    with connect(args) as client:
        status = client.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    out = console()
    out.print(render(status, out.width))
    for row in status["kernels"]:
        damaged = row.get("stats", {}).get("subsystems", {}).get("fs", {}).get("damaged", {})
        for volume, why in sorted(damaged.items()):
            out.print(f"kernel {row['id']}: damaged volume {volume!r}: {why}",
                      style="bold red", markup=False)
    migration = status.get("migration")
    if migration:
        out.print(f"scaling {migration['from']} -> {migration['to']} kernels: "
                  f"{migration['slots_moved']}/{migration['slots_total']} slots moved")
    return 0
