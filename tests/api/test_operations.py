"""What operators get from the service itself: one access log line and one count per request
(route template, status, duration, key id; never PHI), and threshold violations recorded as
sealed `performance.threshold.violation` events, at most one per threshold and interval."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from prometheus_client import generate_latest

from app.api.fastpath import AuditApp
from app.apikeys.keys import create_api_key
from app.core.metrics import Metrics, histogram_quantile
from app.monitor.thresholds import Measures, ThresholdMonitor, api_monitor
from tests.conftest import SettingsFactory, event, running, stored_rows, wait_stored
from tests.console.console_client import console_client


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.access"]


def _responses(svc_metrics: Metrics, handler: str, status: str, method: str = "GET") -> float:
    """Requests counted in the one family of HTTP requests (the instrumentator's)."""
    labels = {"handler": handler, "method": method, "status": status}
    return svc_metrics.registry.get_sample_value("http_requests_total", labels) or 0.0


async def test_every_request_is_logged_by_its_route_template_never_its_values(
    settings_factory: SettingsFactory, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    async with running(settings_factory(run_writers=False)) as svc:
        res = svc.app.state.resources
        key_id, key = await create_api_key(
            res.engine, org, ["ingest", "read"], "ops", res.macs.api_keys
        )
        headers = {"Authorization": f"Bearer {key}"}
        body = event(patient_id="p-secret-1")
        posted = await svc.client.post("/events", json=body, headers=headers)
        assert posted.status_code == 202
        report = await svc.client.get(
            "/phi-access/patients/p-secret-2?start=2026-01-01T00:00:00Z", headers=headers
        )
        assert report.status_code == 200
        missing = await svc.client.get("/no/such/p-secret-3")
        assert missing.status_code == 404
        async with console_client(svc.app, key) as console:  # a mounted app of its own
            assert (await console.get("/console")).status_code == 200
            assert (await console.get(f"/console/events/{uuid.uuid4()}")).status_code == 404
            assert (await console.get("/console/no/such/p-secret-4")).status_code == 404
        lines = _access_lines(caplog)
        routes = [
            (r.method, r.route, r.status, r.key_id)  # type: ignore[attr-defined]
            for r in lines
        ]
        assert ("POST", "/events", 202, key_id) in routes
        assert ("GET", "/phi-access/patients/{patient_id}", 200, key_id) in routes
        assert ("GET", "unmatched", 404, None) in routes
        assert ("GET", "/console/login", 200, None) in routes
        assert ("GET", "/console", 200, key_id) in routes
        assert ("GET", "/console/events/{event_id}", 404, key_id) in routes
        assert routes.count(("GET", "unmatched", 404, None)) == 2
        assert all(r.duration_ms >= 0 for r in lines)  # type: ignore[attr-defined]
        text = json.dumps([r.__dict__ for r in lines], default=str)
        assert "p-secret" not in text and "2026-01-01" not in text
        metrics = svc.app.state.metrics
        assert _responses(metrics, "/events", "202", "POST") == 1  # the fast path's too
        assert _responses(metrics, "/phi-access/patients/{patient_id}", "200") == 1
        assert _responses(metrics, "none", "404") == 2  # no route: no path of the client's
        assert _responses(metrics, "/console/events/{event_id}", "404") == 1
        assert _responses(metrics, "/console", "200") == 1
        exposed = generate_latest(metrics.registry).decode()
        assert "audit_http_responses" not in exposed  # requests are counted once
        assert "p-secret" not in exposed
        duration = 'http_request_duration_seconds_count{handler="/events",method="POST"} 1.0'
        assert duration in exposed


async def test_the_access_log_can_be_turned_off_and_requests_still_count(
    settings_factory: SettingsFactory, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    async with running(settings_factory(run_writers=False, access_log=False)) as svc:
        headers = await svc.key(org)
        assert (await svc.client.post("/events", json=event(), headers=headers)).status_code == 202
        assert _access_lines(caplog) == []
        assert _responses(svc.app.state.metrics, "/events", "202", "POST") == 1


def test_quantiles_interpolate_within_buckets_as_prometheus_does() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 99.0, 5.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.1)
    assert histogram_quantile(buckets, 0.7) == pytest.approx(0.3)
    assert histogram_quantile(buckets, 0.995) == pytest.approx(3.0)
    assert histogram_quantile({1.0: 0.0, float("inf"): 0.0}, 0.99) is None


async def test_violations_become_sealed_events_at_most_one_per_interval(
    settings_factory: SettingsFactory, database_url: str
) -> None:
    operations = f"ops-{uuid.uuid4().hex[:8]}"
    settings = settings_factory(
        threshold_queue_depth=5, threshold_lag_p99_s=1.0, operations_org=operations
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        depth = {"now": 0}
        monitor = ThresholdMonitor(res, "api", Measures(res.metrics, lambda: depth["now"]))
        assert await monitor.check() == 0  # nothing exceeded
        depth["now"] = 9
        res.metrics.ingest_to_persist_seconds.observe(4.0)  # this window's p99: above 1 s
        assert await monitor.check() == 2
        depth["now"] = 12
        assert await monitor.check() == 0  # within the interval: counted, not recorded
        await wait_stored(database_url, operations, 2)
        rows = await stored_rows(database_url, operations)
        by_metric = {json.loads(r["details"])["metric"]: r for r in rows}
        assert set(by_metric) == {"queue_depth", "ingest_to_persist_p99"}
        depth_row = by_metric["queue_depth"]
        details = json.loads(depth_row["details"])
        assert depth_row["action"] == "performance.threshold.violation"
        assert depth_row["status"] == "failure" and depth_row["priority"] == "high"
        assert depth_row["principal_id"] == "performance-monitor"
        assert (details["value"], details["threshold"], details["process"]) == (9, 5, "api")
        assert depth_row["batch_id"] is not None  # sealed into the ledger
        violations = res.metrics.threshold_violations
        assert violations.labels(metric="queue_depth")._value.get() == 2


async def test_the_monitor_watches_memory_and_errors_of_its_process(
    settings_factory: SettingsFactory, database_url: str
) -> None:
    operations = f"ops-{uuid.uuid4().hex[:8]}"
    settings = settings_factory(
        threshold_rss_mb=1, threshold_event_interval_s=0, operations_org=operations
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        monitor = api_monitor(res)
        assert await monitor.check() == 1  # any process is over 1 MiB
        assert isinstance(svc.app, AuditApp) and svc.app.request_metrics is not None
        measured = svc.app.request_metrics
        for _ in range(9):
            measured.observe("/events", "POST", "202", 0.001)
        measured.observe("/events", "POST", "503", 0.001)
        assert await monitor.check() == 2  # 10% of this window's answers were 5xx
        await wait_stored(database_url, operations, 3)
        metrics = sorted(
            json.loads(r["details"])["metric"] for r in await stored_rows(database_url, operations)
        )
        assert metrics == ["error_rate", "memory_rss", "memory_rss"]


async def test_a_log_no_quorum_has_cosigned_for_too_long_is_a_violation(
    settings_factory: SettingsFactory, database_url: str
) -> None:
    operations = f"ops-{uuid.uuid4().hex[:8]}"
    settings = settings_factory(
        threshold_unwitnessed_s=30,
        threshold_event_interval_s=0,
        threshold_rss_mb=1_000_000,  # only the gauge under test may cross its threshold
        operations_org=operations,
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        monitor = api_monitor(res)
        res.metrics.unwitnessed_seconds.labels(chain="0").set(29)
        assert await monitor.check() == 0
        res.metrics.unwitnessed_seconds.labels(chain="1").set(31)  # the checkpointer's gauge
        assert await monitor.check() == 1
        await wait_stored(database_url, operations, 1)
        [row] = await stored_rows(database_url, operations)
        details = json.loads(row["details"])
        assert (details["metric"], details["value"]) == ("log_unwitnessed", 31)
