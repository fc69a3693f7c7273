"""The operator kit: the alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`), the Prometheus configuration checks, the Grafana dashboard is well
formed and every query in it parses, and every metric the rules and the dashboard name is one
the service exports. The compose profile `monitoring` runs both, provisioned with these files.

promtool comes with Debian's `prometheus` package (`.ci/run` installs it); without it these
tests are skipped, unless AUDIT_TEST_REQUIRE_PROMTOOL=1 (as in CI) makes that a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.api.app import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "audit-ingest.json"
METRIC = re.compile(r"\b((?:audit|process|http)_[a-z0-9_]+)\b")
PANELS_ASKED = (  # what the dashboard must show
    "audit_events_accepted_total",  # throughput
    "http_request_duration_seconds_bucket",  # latency
    "audit_ingest_to_persist_seconds_bucket",  # lag
    "audit_queue_depth",  # depth
    "audit_events_dead_lettered_total",  # DLQ
    "audit_batch_size_bucket",  # batch size
    "audit_ledger_head_seq",  # ledger head per chain
)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("AUDIT_TEST_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)


def exported_names() -> set[str]:
    """Every sample name a process exports on its registry (counters with _total, histograms
    with _bucket, _sum and _count), the process collector's and the HTTP metrics' included."""
    names: set[str] = set()
    app = create_app(make_settings("postgresql://unused/x", "redis://unused"))
    for family in app.state.metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    # Histograms and counters with no observation yet still name their series this way.
    for name in list(names):
        names.update({f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def alert_queries() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_alert_rules_check_and_pass_their_unit_tests() -> None:
    tool = promtool()
    checked = run(tool, "check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(tool, "test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert names == {
        "AuditQueueDepthHigh",
        "AuditIngestToPersistSlow",
        "AuditCircuitOpen",
        "AuditDeadLettersGrowing",
        "AuditWritersAbsent",
        "AuditProcessMemoryHigh",
        "AuditHttp5xxRate",
        "AuditLogUnwitnessed",
    }
    covered = (PROMETHEUS / "alerts.test.yml").read_text()
    assert all(f"alertname: {name}" in covered for name in names)


def test_the_prometheus_configuration_checks(tmp_path: Path) -> None:
    tool = promtool()
    token = tmp_path / "metrics_token"
    token.write_text("token\n")
    config = (PROMETHEUS / "prometheus.yml").read_text()
    assert config.count("credentials_file: /run/secrets/metrics_token") == 2  # both jobs
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/run/secrets/metrics_token", str(token))
    )
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    checked = run(tool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each panel's query as the expression of a recording rule."""
    tool = promtool()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    checked = run(tool, "check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_is_well_formed_and_shows_what_operators_need() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["title"] and panel["type"] == "timeseries", panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"])
    shown = set(METRIC.findall(" ".join(dashboard_queries())))
    assert set(PANELS_ASKED) <= shown


def test_rules_and_dashboard_name_only_metrics_the_service_exports() -> None:
    exported = exported_names()
    named = set(METRIC.findall(" ".join(dashboard_queries() + alert_queries())))
    assert named - exported == set()


def test_the_monitoring_profile_is_provisioned_with_these_files() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), port
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    assert (
        "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"
        in (services["prometheus"]["volumes"])
    )
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["uid"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/audit-ingest.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (
        "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro"
        in (services["grafana"]["volumes"])
    )
    assert "GF_SECURITY_ADMIN_PASSWORD" not in services["grafana"]["environment"]
