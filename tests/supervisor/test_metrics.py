"""The supervisor's Prometheus endpoint, read with prometheus-client's own parser."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from farmctl import start_farm, wait_until
from prometheus_client.parser import text_string_to_metric_families


def scrape(farm: Any, path: str = "/metrics") -> str:
    host, port = farm.ready["metrics"]
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, for every sample of the exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def total(found: dict[Any, float], name: str, **labels: str) -> float:
    """Sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in found.items()
               if n == name and set(labels.items()) <= set(ls))


def test_metrics_move_when_the_farm_works(tmp_path: Path) -> None:
    with start_farm(tmp_path, 2) as farm:
        before = samples(scrape(farm))
        assert value(before, "kernelfarm_kernels") == 2
        for kid in ("0", "1"):
            assert value(before, "kernelfarm_kernel_state", kernel=kid, state="running") == 1
            assert value(before, "kernelfarm_kernel_slots", kernel=kid) == 8192
            assert value(before, "kernelfarm_kernel_threads", kernel=kid) == 1
            assert value(before, "kernelfarm_kernel_resident_memory_bytes", kernel=kid) > 0
            assert value(before, "kernelfarm_kernel_open_fds", kernel=kid) > 0
        client = farm.client()
        client.fs.mkdir("/alice")
        for n in range(50):
            client.fs.write_file(f"/alice/f{n}", b"x" * 1000)
        with pytest.raises(FileNotFoundError):
            client.fs.stat("/alice/missing")
        after = samples(scrape(farm))
        assert total(after, "kernelfarm_kernel_ops_total", method="fs.write_file") == 50
        assert total(after, "kernelfarm_kernel_errors_total", code="ENOENT") == 1
        assert total(after, "kernelfarm_kernel_request_seconds_count") >= 52
        assert total(after, "kernelfarm_kernel_request_seconds_bucket", le="+Inf") == \
            total(after, "kernelfarm_kernel_request_seconds_count")
        assert total(after, "kernelfarm_kernel_rpc_received_bytes_total") >= 50_000
        assert total(after, "kernelfarm_kernel_rpc_sent_bytes_total") > \
            total(before, "kernelfarm_kernel_rpc_sent_bytes_total")
        assert total(after, "kernelfarm_kernel_group_commits_total") >= 1
        assert total(after, "kernelfarm_fs_files") == 50
        assert total(after, "kernelfarm_fs_journal_bytes") >= 50_000
        cpu_before = total(before, "kernelfarm_kernel_cpu_seconds_total")
        # CPU time moves in clock ticks (10 ms): keep the farm busy until one passes.
        wait_until(lambda: client.fs.listdir("/alice") and total(
            samples(scrape(farm)), "kernelfarm_kernel_cpu_seconds_total") > cpu_before,
            what="kernel CPU time to grow")


def test_restarts_and_scaling_show_in_the_metrics(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        os.kill(farm.kernel_pids()[0], signal.SIGKILL)
        wait_until(lambda: value(samples(scrape(farm)), "kernelfarm_kernel_restarts_total",
                                 kernel="0") == 1, what="the restart counted")
        client = farm.client()
        client.scale(2)
        found = samples(scrape(farm))
        assert value(found, "kernelfarm_migrations_total") == 1
        assert value(found, "kernelfarm_migrated_slots_total") == 8192
        assert value(found, "kernelfarm_migration_seconds_total") > 0
        assert value(found, "kernelfarm_kernel_slots", kernel="1") == 8192


def test_only_metrics_is_served_and_it_can_be_switched_off(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(farm, "/")
        assert err.value.code == 404
        err.value.close()
    with start_farm(tmp_path, 1, "--metrics", "off", name="off") as farm:
        assert farm.ready["metrics"] is None


def test_supervisor_pings_are_not_counted_as_ops(tmp_path: Path) -> None:
    """An idle farm shows 0 ops/s although the supervisor pings every kernel each second."""
    config = "[supervisor]\nheartbeat_interval = 0.05\n"
    with start_farm(tmp_path, 1, config_text=config) as farm:
        client = farm.client()
        def pinged() -> dict[str, Any] | None:
            """The status once a few heartbeats are counted (a row has no ``stats``
            until the supervisor has read the kernel's: on a loaded machine, a while)."""
            status = client.status()
            ops = status["kernels"][0].get("stats", {}).get("ops", {})
            return status if ops.get("kernel.ping", 0) >= 5 else None

        status = wait_until(pinged, what="a few heartbeats")
        row = status["kernels"][0]
        assert row["stats"]["ops_total"] == 0
        assert row["ops_per_s"] == 0


def test_tenant_counters_move_and_stay_within_the_cap(tmp_path: Path) -> None:
    """Five tenants work, the cap is 2: the two busiest by ops get a series each, the rest
    are summed into ``(other)`` -- never more than cap + 1 series per family."""
    config = "[metrics]\nmax_tenants = 2\n"
    with start_farm(tmp_path, 2, config_text=config) as farm:
        admin = farm.client()
        work = {"t0": 40, "t1": 30, "t2": 20, "t3": 10, "t4": 5}
        for name, calls in work.items():
            token = admin.control_call("tenant.add", name, [name], [])["token"]
            tenant = farm.client(token=token)
            tenant.fs.mkdir(f"/{name}")
            for n in range(calls - 2):
                tenant.fs.write_file(f"/{name}/f{n}", b"x" * 100)
            with pytest.raises(FileNotFoundError):
                tenant.fs.stat(f"/{name}/missing")
        found = samples(scrape(farm))
        ops = {dict(labels)["tenant"]: v for (n, labels), v in found.items()
               if n == "kernelfarm_tenant_ops_total"}
        # Each tenant's hello counts too: calls + 1 requests answered.
        assert ops == {"t0": 41, "t1": 31, "(other)": 21 + 11 + 6}, ops
        for family in ("errors", "received_bytes", "sent_bytes"):
            series = {dict(labels)["tenant"]: v for (n, labels), v in found.items()
                      if n == f"kernelfarm_tenant_{family}_total"}
            assert set(series) == {"t0", "t1", "(other)"}, (family, series)
        errors = {dict(labels)["tenant"]: v for (n, labels), v in found.items()
                  if n == "kernelfarm_tenant_errors_total"}
        assert errors == {"t0": 1, "t1": 1, "(other)": 3}
        assert value(found, "kernelfarm_tenant_received_bytes_total", tenant="t0") > 38 * 100
        assert value(found, "kernelfarm_tenant_sent_bytes_total", tenant="t0") > 0
        # A quiet tenant that gets busy takes a series; the totals only grow.
        token = admin.control_call("tenant.rotate", "t4")["token"]
        busy = farm.client(token=token)
        for n in range(60):
            busy.fs.stat(f"/t4/f{n % 3}")
        again = samples(scrape(farm))
        ops = {dict(labels)["tenant"]: v for (n, labels), v in again.items()
               if n == "kernelfarm_tenant_ops_total"}
        assert set(ops) == {"t4", "t0", "(other)"} and ops["t4"] == 6 + 61, ops
        assert sum(ops.values()) == 41 + 31 + 21 + 11 + 6 + 61
