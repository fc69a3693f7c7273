"""Health, readiness, metrics and queue stats."""

from __future__ import annotations

from tests.conftest import Service, SettingsFactory, event, eventually, running, wait_stored
from tests.proxy import proxied_database


async def test_health_and_readiness(service: Service) -> None:
    assert (await service.client.get("/healthz")).json() == {"status": "ok"}

    async def ready() -> bool:  # the first writer heartbeat comes with its first cycle
        return (await service.client.get("/readyz")).status_code == 200

    await eventually(ready, 5)
    body = (await service.client.get("/readyz")).json()
    assert body["checks"] == {"redis": "ok", "postgres": "ok", "writer_heartbeat": "ok"}


async def test_not_ready_without_writers(settings_factory: SettingsFactory) -> None:
    async with running(settings_factory(run_writers=False)) as svc:
        resp = await svc.client.get("/readyz")
        assert resp.status_code == 503
        assert resp.json()["error"]["details"]["writer_heartbeat"] == "failing"


async def test_metrics_count_the_pipeline(service: Service, org: str, database_url: str) -> None:
    headers = await service.key(org)
    await service.client.post("/events/bulk", json=[event()] * 5, headers=headers)
    await service.client.post("/events", json={"bad": 1}, headers=headers)
    await wait_stored(database_url, org, 5)
    text = (await service.client.get("/metrics")).text
    assert "audit_events_accepted_total 5.0" in text
    assert "audit_events_persisted_total 5.0" in text
    assert 'audit_events_rejected_total{reason="validation_failed"} 1.0' in text
    for name in (
        "audit_batch_size_bucket",
        "audit_batch_write_seconds_bucket",
        "audit_ingest_to_persist_seconds_bucket",
        "audit_queue_depth",
        "audit_circuit_open 0.0",
        "audit_events_dead_lettered_total",
        "http_requests_total",
    ):
        assert name in text, name


async def test_metrics_token_when_configured(settings_factory: SettingsFactory) -> None:
    async with running(settings_factory(metrics_token="s3cret")) as svc:
        assert (await svc.client.get("/metrics")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await svc.client.get("/metrics", headers=wrong)).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert (await svc.client.get("/metrics", headers=right)).status_code == 200


async def test_queue_stats_account_for_every_event(
    service: Service, org: str, database_url: str
) -> None:
    headers = await service.key(org)
    await service.client.post("/events/bulk", json=[event()] * 30, headers=headers)
    await wait_stored(database_url, org, 30)
    stats = (await service.client.get("/operator/queue/stats", headers=headers)).json()
    assert stats["persisted_total"] == 30
    assert stats["queued_events"] == 0 and stats["pending"] == 0 and stats["waiting"] == 0
    assert stats["consumers"] >= 1 and stats["dead_letter"] == 0
    assert stats["oldest_pending_age_ms"] is None


async def test_openapi_describes_event_bodies(service: Service) -> None:
    doc = (await service.client.get("/openapi.json")).json()
    single = doc["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    bulk = doc["paths"]["/events/bulk"]["post"]["requestBody"]["content"]["application/json"]
    assert single["schema"] == {"$ref": "#/components/schemas/EventIn"}
    assert bulk["schema"]["items"] == {"$ref": "#/components/schemas/EventIn"}
    event_in = doc["components"]["schemas"]["EventIn"]
    assert set(event_in["required"]) == {"action", "status", "principal_id"}
    assert event_in["additionalProperties"] is False
    assert "SessionContext" in doc["components"]["schemas"]
    assert "202" in doc["paths"]["/events/bulk"]["post"]["responses"]


async def test_database_outage_answers_503_and_ingest_goes_on(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    proxy, url = await proxied_database(database_url)
    settings = settings_factory(
        database_url=url,
        run_writers=False,
        auth_cache_seconds=30,
    )
    async with running(settings) as svc:
        known = await svc.key(org)
        unknown = await svc.key(org)
        assert (await svc.client.post("/events", json=event(), headers=known)).status_code == 202
        await proxy.cut()
        again = await svc.client.post("/events", json=event(), headers=known)
        assert again.status_code == 202  # a key verified before the outage still ingests
        for resp in (
            await svc.client.post("/events", json=event(), headers=unknown),
            await svc.client.get("/events", headers=known),
        ):
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "unavailable"
            assert resp.headers["retry-after"] == "1"
