"""Prometheus metrics of the farm, served by the supervisor at ``[metrics] listen``.

Nothing here is on the data path: a scrape asks every kernel for ``kernel.stats`` over its
control socketpair (the same call ``kernelfarm status`` makes), turns the counters the
kernels keep anyway into metric families, and renders them with prometheus-client's own
exposition code.  Values are read when scraped, so the supervisor keeps no copy that could
go stale, and a kernel that does not answer only loses its rows for that scrape.

The endpoint is a few lines of HTTP/1.0 on the supervisor's event loop (no thread, no web
framework): ``GET /metrics`` and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.metrics_core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
)

if TYPE_CHECKING:
    from kernelfarm.supervisor.supervisor import Supervisor

log = logging.getLogger("kernelfarm.supervisor")

REQUEST_LIMIT = 16 * 1024
"""Bytes of request head a scrape may send; more is refused (the endpoint is no proxy)."""
REQUEST_TIMEOUT_S = 10.0

NS = "kernelfarm"


class FarmSnapshot(Collector):
    """One ``cluster.status`` answer, seen as Prometheus metric families.

    prometheus-client's exposition takes any collector: the families are built from the
    snapshot and thrown away, so the endpoint keeps no registry.
    """

    def __init__(self, status: dict[str, Any], scaling: dict[str, float],
                 max_tenants: int) -> None:
        self.status = status
        self.scaling = scaling
        self.max_tenants = max_tenants

    def collect(self) -> Iterator[Metric]:
        status = self.status
        yield _gauge("epoch", "epoch of the slot table (grows on every change)",
                     status["epoch"])
        yield _gauge("kernels", "kernels of the farm, whatever their state",
                     len(status["kernels"]))
        yield _gauge("uptime_seconds", "seconds since the supervisor started",
                     status["uptime"])
        migrations = CounterMetricFamily(f"{NS}_migrations", "live scale operations done")
        migrations.add_metric([], self.scaling["done"])
        yield migrations
        seconds = CounterMetricFamily(f"{NS}_migration_seconds",
                                      "seconds spent in live scale operations")
        seconds.add_metric([], self.scaling["seconds"])
        yield seconds
        moved = CounterMetricFamily(f"{NS}_migrated_slots", "slots moved by live scaling")
        moved.add_metric([], self.scaling["slots"])
        yield moved
        yield from kernel_families(status["kernels"])
        yield from tenant_families(status["kernels"], self.max_tenants)


TENANT_COUNTERS = (
    ("ops", "requests answered"), ("errors", "requests answered with an error"),
    ("received_bytes", "msgpack-rpc bytes read from the tenant's connections"),
    ("sent_bytes", "msgpack-rpc reply bytes written to them"))
OTHER_TENANTS = "(other)"
NO_TENANT = "(none)"
"""Label values no tenant can have (names are letters, digits, '_', '.', '-')."""


def tenant_families(rows: list[dict[str, Any]], cap: int) -> Iterator[Metric]:
    """Per-tenant counters, farm-wide (summed over the kernels), at most ``cap`` + 1 series.

    The ``cap`` busiest tenants by requests get a series each and every other tenant is
    summed into ``tenant="(other)"``, so a farm with thousands of tenants still exports a
    bounded number of series.  A tenant moving in or out of the top ``cap`` moves its
    counts between its series and ``(other)``, which then looks like a counter reset.
    """
    totals: dict[str, list[int]] = {}
    for row in rows:
        usage_of = (row.get("stats") or {}).get("tenants", {})
        for name, usage in usage_of.items():
            sums = totals.setdefault(name or NO_TENANT, [0, 0, 0, 0])
            for i, key in enumerate(("ops", "errors", "bytes_in", "bytes_out")):
                sums[i] += int(usage.get(key, 0))
    ranked = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))
    shown, rest = ranked[:cap], ranked[cap:]
    if rest:
        shown.append((OTHER_TENANTS, [sum(sums[i] for _, sums in rest) for i in range(4)]))
    families = [CounterMetricFamily(f"{NS}_tenant_{name}", f"{help_text}, per tenant "
                                    f"(the busiest [metrics] max_tenants; the rest summed "
                                    f"as {OTHER_TENANTS})", labels=["tenant"])
                for name, help_text in TENANT_COUNTERS]
    for tenant, sums in shown:
        for family, count in zip(families, sums, strict=True):
            family.add_metric([tenant], count)
    yield from families


def kernel_families(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    """Per-kernel families, labelled ``kernel="<id>"``."""
    k = ["kernel"]
    state = GaugeMetricFamily(f"{NS}_kernel_state", "1 for the state each kernel is in",
                              labels=k + ["state"])
    restarts = CounterMetricFamily(f"{NS}_kernel_restarts",
                                   "times the supervisor restarted the kernel", labels=k)
    slots = GaugeMetricFamily(f"{NS}_kernel_slots", "hash slots the kernel owns", labels=k)
    ops = CounterMetricFamily(f"{NS}_kernel_ops", "requests served, by method "
                              "(the supervisor's own pings included)", labels=k + ["method"])
    errors = CounterMetricFamily(f"{NS}_kernel_errors", "failed requests, by error code",
                                 labels=k + ["code"])
    latency = HistogramMetricFamily(
        f"{NS}_kernel_request_seconds", "service time in the kernel, measured per batch of "
        "requests read together (no queueing, no fsync wait)", labels=k)
    cpu = CounterMetricFamily(f"{NS}_kernel_cpu_seconds", "CPU time of the kernel process",
                              labels=k + ["mode"])
    gauges: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "memory_rss": GaugeMetricFamily(f"{NS}_kernel_resident_memory_bytes",
                                        "resident memory of the kernel process", labels=k),
        "fds": GaugeMetricFamily(f"{NS}_kernel_open_fds", "open file descriptors",
                                 labels=k),
        "threads": GaugeMetricFamily(f"{NS}_kernel_threads", "OS threads (1 when unicpu)",
                                     labels=k),
        "connections": GaugeMetricFamily(f"{NS}_kernel_connections",
                                         "client connections open", labels=k),
    }
    counters: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "bytes_in": CounterMetricFamily(f"{NS}_kernel_rpc_received_bytes",
                                        "msgpack-rpc bytes read from clients", labels=k),
        "bytes_out": CounterMetricFamily(f"{NS}_kernel_rpc_sent_bytes",
                                         "msgpack-rpc reply bytes written", labels=k),
        "group_commits": CounterMetricFamily(
            f"{NS}_kernel_group_commits", "group commits (one fsync per volume written in a "
            "loop turn)", labels=k),
        "group_commit_seconds": CounterMetricFamily(
            f"{NS}_kernel_group_commit_seconds", "seconds spent flushing group commits",
            labels=k),
    }
    subsystem: dict[tuple[str, str], GaugeMetricFamily | CounterMetricFamily] = {
        ("fs", "volumes"): GaugeMetricFamily(f"{NS}_fs_volumes", "volumes held", labels=k),
        ("fs", "files"): GaugeMetricFamily(f"{NS}_fs_files", "files held", labels=k),
        ("fs", "bytes"): GaugeMetricFamily(f"{NS}_fs_bytes", "file bytes held", labels=k),
        ("fs", "journal_bytes"): GaugeMetricFamily(
            f"{NS}_fs_journal_bytes", "journal bytes not yet folded into a snapshot",
            labels=k),
        ("fs", "snapshots"): CounterMetricFamily(f"{NS}_fs_snapshots", "snapshots taken",
                                                 labels=k),
        ("fs", "snapshot_seconds"): CounterMetricFamily(
            f"{NS}_fs_snapshot_seconds", "seconds spent taking snapshots", labels=k),
        ("net", "namespaces"): GaugeMetricFamily(f"{NS}_net_namespaces", "namespaces held",
                                                 labels=k),
        ("net", "sockets"): GaugeMetricFamily(f"{NS}_net_sockets", "sockets open", labels=k),
        ("net", "bytes_in"): CounterMetricFamily(f"{NS}_net_received_bytes",
                                                 "bytes received by net sockets", labels=k),
        ("net", "bytes_out"): CounterMetricFamily(f"{NS}_net_sent_bytes",
                                                  "bytes sent by net sockets", labels=k),
    }
    for row in rows:
        kid = str(row["id"])
        state.add_metric([kid, row["state"]], 1)
        restarts.add_metric([kid], row["restarts"])
        slots.add_metric([kid], row["slots"])
        stats = row.get("stats")
        if not stats:
            continue  # not answering this time: its counters are simply absent
        for method, count in sorted(stats["ops"].items()):
            ops.add_metric([kid, method], count)
        for code, count in sorted(stats.get("errors_by_code", {}).items()):
            errors.add_metric([kid, code], count)
        hist = stats.get("latency")
        if hist:
            latency.add_metric([kid], _buckets(hist["bounds"], hist["counts"]),
                               sum_value=hist["sum"])
        cpu.add_metric([kid, "user"], stats["cpu_user"])
        cpu.add_metric([kid, "system"], stats["cpu_system"])
        families: list[tuple[str, GaugeMetricFamily | CounterMetricFamily]] = [
            *gauges.items(), *counters.items()]
        for key, family in families:
            if key in stats:
                family.add_metric([kid], stats[key])
        for (name, key), family in subsystem.items():
            value = stats.get("subsystems", {}).get(name, {}).get(key)
            if value is not None:
                family.add_metric([kid], value)
    yield from (state, restarts, slots, ops, errors, latency, cpu, *gauges.values(),
                *counters.values(), *subsystem.values())


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", help_text, value=value)


def _buckets(bounds: list[float], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts -> Prometheus's cumulative ``le`` buckets, ending at +Inf."""
    cumulative = 0.0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip([*map(repr, bounds), "+Inf"], counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return buckets


async def render(supervisor: Supervisor) -> bytes:
    status = await supervisor.cluster_status()
    scaler = supervisor.scaler
    snapshot = FarmSnapshot(status, {"done": scaler.done, "seconds": scaler.done_seconds,
                                     "slots": scaler.slots_moved},
                            supervisor.config.metrics.max_tenants)
    return generate_latest(snapshot)


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.0 on a socket bound by the caller."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_server(self._serve, sock=sock,
                                                 limit=REQUEST_LIMIT)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await _reply(writer, 405, b"only GET\n", "text/plain")
            elif path != "/metrics":
                await _reply(writer, 404, b"metrics are at /metrics\n", "text/plain")
            else:
                body = await render(self.supervisor)
                await _reply(writer, 200, body if method == "GET" else b"",
                             CONTENT_TYPE_LATEST, length=len(body))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError, UnicodeDecodeError):
            pass  # a client that hung up or sent junk: nothing to answer
        except Exception:
            log.exception("metrics scrape failed")
            await _reply(writer, 500, b"scrape failed; see the supervisor's log\n",
                         "text/plain")
        finally:
            writer.close()


async def _reply(writer: asyncio.StreamWriter, code: int, body: bytes, content_type: str,
                 length: int | None = None) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
              500: "Internal Server Error"}[code]
    writer.write(f"HTTP/1.0 {code} {reason}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body) if length is None else length}\r\n"
                 f"Connection: close\r\n\r\n".encode("latin-1") + body)
    try:
        await writer.drain()
    except ConnectionError:
        pass
