"""Alerts are evidence: the service running with the watch stores each case once and records it
as exactly one sealed audit.alert.raised event of its organization, also when it queues the
event twice; one writer process watches at a time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from app.core.metrics import Metrics
from app.events.record import EventRecord
from app.ledger.verify import Verifier, verify_range
from app.watch import watcher
from app.watch.cases import RAISED, raised_event_id
from app.watch.outbox import alert_record
from app.watch.watcher import Watch
from tests.conftest import SettingsFactory, eventually, running
from tests.watch.conftest import FreshDatabase
from tests.watch.planted import WEDNESDAY_10AM, access, seal_records

ORG = "org-watched"


def test_an_alerts_event_is_the_same_every_time_it_is_made() -> None:
    alert_id = uuid.UUID("f0037e54-515b-5734-88fe-a556ff663ce4")
    alert: dict[str, Any] = {
        "alert_id": alert_id,
        "organization_id": ORG,
        "rule": "break_glass",
        "severity": "medium",
        "subject": "principal dr.x, patient p1",
        "principal_id": "dr.x",
        "patient_id": "p1",
        "window_start": datetime(2026, 12, 2, tzinfo=UTC),
        "window_end": datetime(2026, 12, 3, tzinfo=UTC),
        "event_ids": [uuid.UUID(int=1)],
        "details": '{"events": 1}',
        "raised_at": datetime(2026, 12, 2, 10, 0, 1, 250_000, tzinfo=UTC),
    }
    record = alert_record(alert)
    assert record == alert_record(dict(alert))
    assert record["event_id"] == str(raised_event_id(alert_id))
    assert record["event_id"] == "b1dc7e2a-bcda-58fd-9cd8-25b47be3b6d5"
    assert record["timestamp"] == record["received_at"] == "2026-12-02T10:00:01.250000Z"
    assert record["action"] == RAISED and record["organization_id"] == ORG
    assert record["principal_id"] == "watch" and record["patient_id"] is None
    details = record["details"]
    assert details is not None
    assert details["patient_id"] == "p1" and details["rule"] == "break_glass"
    assert details["event_ids"] == [str(uuid.UUID(int=1))] and details["facts"] == {"events": 1}


def planted() -> list[EventRecord]:
    at = WEDNESDAY_10AM
    return [
        access(ORG, "dr.x", "p1", at, break_glass=True),
        access(ORG, "dr.y", "p2", at + timedelta(minutes=1), break_glass=True),
        access(ORG, "dr.z", "p3", at + timedelta(hours=12)),  # 22:00: after hours
    ]


async def test_each_alert_is_sealed_once_however_often_it_is_queued(
    fresh_database: FreshDatabase, settings_factory: SettingsFactory
) -> None:
    url = await fresh_database()
    records = planted()
    await seal_records(url, records)
    settings = settings_factory(database_url=url, watch_enabled=True, watch_interval_s=0.05)
    conn = await asyncpg.connect(url)

    async def sealed() -> list[asyncpg.Record]:
        return list(
            await conn.fetch("SELECT * FROM audit_log WHERE action = $1 ORDER BY event_id", RAISED)
        )

    async def all_recorded(count: int) -> bool:
        pending = await conn.fetchval("SELECT count(*) FROM watch_alerts WHERE recorded_at IS NULL")
        return pending == 0 and len(await sealed()) == count

    try:
        async with running(settings) as service:
            await eventually(lambda: all_recorded(3), within_s=20)
            # The process stopped after queueing the events and before marking them: they are
            # queued again, the same events, and the writers store them once.
            await conn.execute("UPDATE watch_alerts SET recorded_at = NULL")
            metrics: Metrics = service.app.state.metrics
            recorded = metrics.registry.get_sample_value("audit_watch_alerts_recorded_total")
            assert recorded == 3

            async def queued_again() -> bool:
                again = metrics.registry.get_sample_value("audit_watch_alerts_recorded_total")
                stream = service.app.state.resources.stream
                return again == 6 and await stream.queued_events() == 0

            await eventually(queued_again, within_s=20)
            await eventually(lambda: all_recorded(3), within_s=20)
            dead = await service.app.state.resources.stream.shards[0].dead_letters()
            assert dead == []
            raised = metrics.registry.get_sample_value(
                "audit_watch_alerts_total", {"rule": "break_glass"}
            )
            assert raised == 2
            latency = metrics.registry.get_sample_value("audit_watch_alert_latency_seconds_count")
            assert latency == 3

        alerts = {a["alert_id"]: a for a in await conn.fetch("SELECT * FROM watch_alerts")}
        events = await sealed()
        assert sorted(e["event_id"] for e in events) == sorted(
            raised_event_id(alert_id) for alert_id in alerts
        )
        triggering = {uuid.UUID(r["event_id"]) for r in records}
        for event in events:
            details = orjson.loads(event["details"])
            alert = alerts[uuid.UUID(details["alert_id"])]
            assert event["organization_id"] == ORG and event["principal_id"] == "watch"
            assert event["timestamp"] == alert["raised_at"]
            assert [uuid.UUID(e) for e in details["event_ids"]] == alert["event_ids"]
            assert set(alert["event_ids"]) <= set(triggering)
        verifier = Verifier(
            settings.signing_keys_by_id,
            settings.ledger_public_key,
            ledger_keys=settings.ledger_keys_by_id,
        )
        report = await verify_range(conn, verifier, 1, None)
        assert report.intact and report.events == 6
    finally:
        await conn.close()


async def test_one_writer_process_watches_at_a_time(
    fresh_database: FreshDatabase,
    settings_factory: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watcher, "LOCK_RETRY_S", 0.0)
    url = await fresh_database()
    await seal_records(url, planted())
    settings = settings_factory(database_url=url)
    first, second = Watch(settings, Metrics.create(), None), Watch(settings, Metrics.create(), None)
    try:
        assert await first.round() is False and first.detector is not None
        assert await second.round() is False and second.detector is None  # not its turn
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM watch_alerts") == 3
        finally:
            await conn.close()
        await first._drop_connection()  # the leader's process ends
        await second.round()
        assert second.detector is not None
    finally:
        await first._drop_connection()
        await second._drop_connection()
