"""POST /events and /events/bulk end to end: HTTP -> Redis -> writer -> PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.core.timefmt import format_timestamp
from app.ledger.hashing import event_hash, record_from_row, sign_hash
from app.writer.batch import plan_batch
from tests.conftest import (
    Service,
    SettingsFactory,
    event,
    running,
    stored_rows,
    wait_stored,
)


async def test_single_event_round_trip(service: Service, org: str, database_url: str) -> None:
    headers = await service.key(org)
    sent = event(
        patient_id="p-1",
        data_classification="PHI",
        timestamp="2026-11-02T10:00:00.5+02:00",
        session_context={"session_id": "s1", "ip_address": "10.0.0.7", "user_agent": "ehr/1"},
        details={"query": {"fields": ["name", "dob"]}, "n": 2, "ratio": 0.1},
        purpose_of_use="TREAT",
        break_glass=True,
    )
    resp = await service.client.post("/events", json=sent, headers=headers)
    assert resp.status_code == 202, resp.text
    event_id = resp.json()["event_id"]
    await wait_stored(database_url, org, 1)
    got = await service.client.get(f"/events/{event_id}", headers=headers)
    assert got.status_code == 200
    body = got.json()
    assert body["timestamp"] == "2026-11-02T08:00:00.500000Z"
    assert body["organization_id"] == org
    assert body["session_context"] == {
        "session_id": "s1",
        "ip_address": "10.0.0.7",
        "user_agent": "ehr/1",
    }
    assert body["details"] == sent["details"]
    assert body["break_glass"] is True and body["data_classification"] == "PHI"
    assert len(bytes.fromhex(body["hash"])) == 32 and body["key_id"] == "test-1"


async def test_bulk_round_trip_and_every_row_verifies(
    service: Service, org: str, database_url: str
) -> None:
    headers = await service.key(org)
    events = [
        event(principal_id=f"u{i}", details={"i": i, "s": "ü" * (i % 3)}) for i in range(1200)
    ]
    resp = await service.client.post("/events/bulk", json=events, headers=headers)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["accepted"] == 1200 and len(set(body["event_ids"])) == 1200
    await wait_stored(database_url, org, 1200)
    rows = await stored_rows(database_url, org)
    assert {str(r["event_id"]) for r in rows} == set(body["event_ids"])
    key = service.settings.signing_key_ring[0]
    for row in rows:
        digest = event_hash(record_from_row(row))
        assert digest == row["hash"]
        assert sign_hash(digest, key) == row["signature"]


async def test_resent_event_is_stored_once(service: Service, org: str, database_url: str) -> None:
    headers = await service.key(org)
    sent = event(event_id=str(uuid.uuid4()), timestamp="2026-11-20T12:00:00Z")
    for _ in range(3):
        assert (await service.client.post("/events", json=sent, headers=headers)).status_code == 202
    await service.client.post("/events/bulk", json=[sent, sent], headers=headers)
    marker = event(principal_id="marker")
    await service.client.post("/events", json=marker, headers=headers)
    await wait_stored(database_url, org, 2)
    stats = (await service.client.get("/operator/queue/stats", headers=headers)).json()
    assert stats["queued_events"] == 0
    rows = await stored_rows(database_url, org)
    assert sorted(r["principal_id"] for r in rows) == ["dr.smith", "marker"]
    # Exact resends arrive at other times, yet they are repeats, not conflicts.
    assert stats["dead_letter"] == 0 and stats["dead_lettered_events"] == 0
    assert stats["persisted_total"] == stats["accepted_total"] == 6


async def test_same_event_id_in_two_organizations_is_kept_for_both(
    service: Service, database_url: str
) -> None:
    shared = event(event_id=str(uuid.uuid4()), timestamp="2026-11-20T12:00:00Z")
    orgs = [f"org-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for org in orgs:
        headers = await service.key(org)
        assert (
            await service.client.post("/events", json=shared, headers=headers)
        ).status_code == 202
    for org in orgs:
        await wait_stored(database_url, org, 1)


async def test_bulk_is_all_or_nothing_and_names_every_bad_item(
    service: Service, org: str, database_url: str
) -> None:
    headers = await service.key(org)
    events = [
        event(),
        event(status="done"),
        event(),
        {"action": "a.b", "status": "success", "principal_id": "x", "colour": "red"},
        event(timestamp="2026-01-01T00:00:00"),
        event(action=""),
    ]
    resp = await service.client.post("/events/bulk", json=events, headers=headers)
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["code"] == "validation_failed"
    found = {(d["index"], d["field"]) for d in error["details"]}
    assert found == {(1, "status"), (3, "colour"), (4, "timestamp"), (5, "action")}
    assert (await service.client.get("/operator/queue/stats", headers=headers)).json()[
        "queued_events"
    ] == 0
    assert await stored_rows(database_url, org) == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"[]", 422, "validation_failed"),
        (b'{"action":"a","status":"success","principal_id":"p"}', 422, "validation_failed"),
        (
            b'[{"action":"a","status":"success","principal_id":"p","break_glass":"yes"}]',
            422,
            "validation_failed",
        ),
        (
            b'[{"action":"a","status":"success","principal_id":"p\\u0000"}]',
            422,
            "validation_failed",
        ),
        (
            b'[{"action":"a","status":"success","principal_id":"p","details":{"n":1e999}}]',
            422,
            "validation_failed",
        ),
        (
            b'[{"action":"a","status":"success","principal_id":"p",'
            b'"details":{"n":123456789012345678901234567890}}]',
            422,
            "validation_failed",
        ),
        (
            b'[{"action":"a","status":"success","principal_id":"p","timestamp":"0999-06-01T00:00:00Z"}]',
            422,
            "validation_failed",
        ),
        (
            b'[{"action":"a","status":"success","principal_id":"p",'
            b'"timestamp":"0001-01-01T00:00:00+01:00"}]',
            422,
            "validation_failed",
        ),
        (
            b'[{"action":"a","status":"success","principal_id":"p",'
            b'"session_context":{"ip_address":"fe80::1%eth0"}}]',
            422,
            "validation_failed",
        ),
        (
            b'[{"action":"a","status":"success","principal_id":"p","details":[1]}]',
            422,
            "validation_failed",
        ),
        (
            b'[{"action":"a","status":"success","principal_id":"p",'
            b'"session_context":{"ip_address":"999.1.1.1"}}]',
            422,
            "validation_failed",
        ),
    ],
)
async def test_bad_bulk_bodies_get_clear_errors(
    service: Service, org: str, body: bytes, status: int, code: str
) -> None:
    headers = {**(await service.key(org)), "Content-Type": "application/json"}
    resp = await service.client.post("/events/bulk", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    assert set(resp.json()["error"]) == {"code", "message", "details"}


async def test_single_endpoint_rejects_arrays_and_wrong_media_type(
    service: Service, org: str
) -> None:
    headers = await service.key(org)
    resp = await service.client.post("/events", json=[event()], headers=headers)
    assert resp.status_code == 422
    form = await service.client.post("/events", data={"a": "b"}, headers=headers)
    assert form.status_code == 415 and form.json()["error"]["code"] == "unsupported_media_type"


async def test_future_timestamps_are_refused(service: Service, org: str) -> None:
    headers = await service.key(org)
    later = format_timestamp(datetime.now(UTC) + timedelta(days=2))
    resp = await service.client.post(
        "/events/bulk", json=[event(), event(timestamp=later)], headers=headers
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["details"][0] == {
        "index": 1,
        "field": "timestamp",
        "type": "timestamp_in_future",
        "message": "timestamp is more than 900 s in the future",
    }


async def test_size_limits_answer_413(settings_factory: SettingsFactory, org: str) -> None:
    settings = settings_factory(
        max_events_per_request=5, max_request_bytes=4096, max_details_bytes=100
    )
    async with running(settings) as svc:
        headers = await svc.key(org)
        too_many = await svc.client.post("/events/bulk", json=[event()] * 6, headers=headers)
        assert too_many.status_code == 413
        too_big = await svc.client.post(
            "/events",
            json=event(outcome_description="x" * 4000, principal_type="y" * 200),
            headers=headers,
        )
        assert too_big.status_code == 413
        big_details = await svc.client.post(
            "/events/bulk", json=[event(), event(details={"blob": "z" * 200})], headers=headers
        )
        assert big_details.status_code == 413
        assert big_details.json()["error"]["details"][0]["index"] == 1
        assert big_details.json()["error"]["details"][0]["type"] == "details_too_large"


async def test_authentication_and_scopes(service: Service, org: str) -> None:
    client = service.client
    assert (await client.post("/events", json=event())).status_code == 401
    bad = {"Authorization": "Bearer aik_not-a-key"}
    assert (await client.post("/events", json=event(), headers=bad)).status_code == 401
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert (await client.post("/events", json=event(), headers=basic)).status_code == 401
    reader = await service.key(org, ("read",))
    resp = await client.post("/events", json=event(), headers=reader)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
    ingester = await service.key(org, ("ingest",))
    assert (await client.get("/events", headers=ingester)).status_code == 403
    assert (await client.get("/queue/stats", headers=ingester)).status_code == 403
    assert (await client.post("/events", json=event(), headers=ingester)).status_code == 202


async def test_backpressure_answers_503_with_retry_after(
    settings_factory: SettingsFactory, org: str
) -> None:
    settings = settings_factory(run_writers=False, max_queue_depth=10, org_queue_share=1)
    async with running(settings) as svc:
        headers = await svc.key(org)
        ok = await svc.client.post("/events/bulk", json=[event()] * 8, headers=headers)
        assert ok.status_code == 202
        full = await svc.client.post("/events/bulk", json=[event()] * 3, headers=headers)
        assert full.status_code == 503
        assert full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        stats = (await svc.client.get("/operator/queue/stats", headers=headers)).json()
        assert stats["queued_events"] == 8 and stats["waiting"] == 1


async def test_high_priority_events_are_written_first(
    settings_factory: SettingsFactory, org: str
) -> None:
    settings = settings_factory(run_writers=False, batch_size=3)
    async with running(settings) as svc:
        headers = await svc.key(org)
        for _ in range(3):
            await svc.client.post("/events", json=event(), headers=headers)
        await svc.client.post(
            "/events/bulk",
            json=[event(priority="high", principal_id=f"h{i}") for i in range(3)],
            headers=headers,
        )
        stream = svc.app.state.resources.stream.shards[0]
        entries = await stream.read("probe", 2, None)
        plan = plan_batch(entries, settings.signing_key_ring[0], svc.app.state.resources.macs)
        assert [r.record["priority"] for r in plan.rows] == ["high"] * 3 + ["normal"]
