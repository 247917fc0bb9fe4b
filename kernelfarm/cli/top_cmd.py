"""``kernelfarm top``: a live view of the farm, one row per kernel and the totals.

It polls ``cluster.status`` (the supervisor asks each kernel for ``kernel.stats`` over its
control channel) and shows what changed between two polls: ops/s, the p99 of the kernels'
own latency histogram over that interval, CPU %.  Nothing is added to the data path.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from kernelfarm.cli.common import add_client_options, connect, interval_arg
from kernelfarm.cli.status import address, fit, mib, state_of, title_of

COLUMNS = ("id", "address", "ops/s", "p99", "cpu", "memory", "conns", "slots", "state")
DROP_ORDER = ("address", "conns")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("top", help="live view of the kernels: ops/s, p99, CPU, memory")
    add_client_options(parser)
    parser.add_argument("--interval", type=interval_arg, default=1.0, metavar="S",
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--count", type=int, default=0, metavar="N",
                        help="stop after N refreshes (default: until Ctrl-C)")
    parser.set_defaults(handler=run)


def p99(bounds: list[float], counts: list[int]) -> float | None:
    """Upper bound of the bucket holding the 99th percentile (``inf`` past the last)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = 0.99 * total
    seen = 0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        seen += count
        if seen >= rank:
            return bound
    return float("inf")


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return f">{1:g}s"
    return f"{value * 1e6:.0f}µs" if value < 0.001 else f"{value * 1e3:.4g}ms"


class Rates:
    """Differences between two ``cluster.status`` answers, per kernel."""

    def __init__(self) -> None:
        self.previous: dict[int, tuple[float, dict[str, Any]]] = {}

    def rows(self, status: dict[str, Any], now: float) -> tuple[list[dict[str, str]],
                                                                    dict[str, str]]:
        rows = []
        total_ops = total_cpu = total_rss = 0.0
        total_conns = total_slots = 0
        all_counts: list[int] = []
        bounds: list[float] = []
        current: dict[int, tuple[float, dict[str, Any]]] = {}
        for row in status["kernels"]:
            stats = row.get("stats") or {}
            before = self.previous.get(row["id"])
            ops = cpu = None
            latency: float | None = None
            if stats:
                current[row["id"]] = (now, stats)
            if stats and before is not None and before[1].get("pid") == stats.get("pid"):
                dt = max(now - before[0], 1e-6)
                ops = max(stats["ops_total"] - before[1]["ops_total"], 0) / dt
                cpu = max(_cpu(stats) - _cpu(before[1]), 0.0) / dt * 100
                bounds = stats["latency"]["bounds"]
                counts = [a - b for a, b in zip(stats["latency"]["counts"],
                                                before[1]["latency"]["counts"], strict=True)]
                latency = p99(bounds, counts)
                all_counts = [a + b for a, b in
                              zip(all_counts or [0] * len(counts), counts, strict=True)]
                total_ops += ops
                total_cpu += cpu
            total_rss += stats.get("memory_rss", 0)
            total_conns += stats.get("connections", 0)
            total_slots += row["slots"]
            rows.append({
                "id": str(row["id"]), "address": address(row.get("addr")),
                "ops/s": "-" if ops is None else f"{ops:,.0f}",
                "p99": seconds(latency), "cpu": "-" if cpu is None else f"{cpu:.0f}%",
                "memory": mib(stats["memory_rss"]) if "memory_rss" in stats else "-",
                "conns": str(stats.get("connections", "-")), "slots": str(row["slots"]),
                "state": state_of(row)})
        self.previous = current
        totals = {"id": "all", "ops/s": f"{total_ops:,.0f}",
                  "p99": seconds(p99(bounds, all_counts)) if all_counts else "-",
                  "cpu": f"{total_cpu:.0f}%", "memory": mib(total_rss),
                  "conns": str(total_conns), "slots": str(total_slots)}
        return rows, totals


def _cpu(stats: dict[str, Any]) -> float:
    return float(stats["cpu_user"] + stats["cpu_system"])


def view(status: dict[str, Any], rates: Rates, width: int, now: float) -> Group:
    rows, totals = rates.rows(status, now)
    table = fit(title_of(status), COLUMNS, rows, width, DROP_ORDER, footer=totals)
    parts: list[Any] = [table]
    migration = status.get("migration")
    if migration:
        parts.append(Text(f"scaling {migration['from']} -> {migration['to']} kernels: "
                          f"{migration['slots_moved']}/{migration['slots_total']} slots moved"))
    parts.append(Text("p99: kernel service time over the last interval · Ctrl-C quits",
                      style="dim"))
    return Group(*parts)


def run(args: argparse.Namespace) -> int:
    console = Console()
    rates = Rates()
    count = getattr(args, "count", 0)
    with connect(args) as client:
        rates.rows(client.status(), time.monotonic())  # the baseline for the first rates
        with Live(console=console, auto_refresh=False, transient=False) as live:
            shown = 0
            while True:
                time.sleep(args.interval)
                status = client.status()
                live.update(view(status, rates, console.width, time.monotonic()),
                            refresh=True)
                shown += 1
                if count and shown >= count:
                    return 0
