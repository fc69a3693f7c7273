"""The detector on sealed batches in a real database: each rule fires on its planted case among the
ordinary traffic of the demo set and nowhere else; a case is stored once when two detectors
examine the same entries at once, and across a restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from app.core.metrics import Metrics
from app.events.record import EventRecord
from app.watch.detector import Detector
from tests.watch.conftest import FreshDatabase
from tests.watch.planted import WEDNESDAY_10AM, access, demo_traffic, seal_records

ORG = "demo"
MORNING = WEDNESDAY_10AM - timedelta(hours=2)  # 08:00 UTC, a Wednesday


async def examine_all(url: str, detector: Detector | None = None) -> Detector:
    """Step through chain 0 until nothing is left to examine."""
    detector = detector or Detector(Metrics.create())
    conn = await asyncpg.connect(url)
    try:
        await detector.book.refresh(conn)
        while (await detector.step(conn, 0)).entries:
            pass
    finally:
        await conn.close()
    return detector


async def alerts(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(
            await conn.fetch("SELECT * FROM watch_alerts ORDER BY rule, subject, window_start")
        )
    finally:
        await conn.close()


async def configure(url: str, *statements: tuple[str, Sequence[Any]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for sql, args in statements:
            await conn.execute(sql, *args)
    finally:
        await conn.close()


RESTRICT = (
    "INSERT INTO watch_restricted_patients (organization_id, patient_id, category, added_by)"
    " VALUES ($1, $2, $3, 'privacy.officer')"
)
RELATE = (
    "INSERT INTO watch_relationships (organization_id, principal_id, patient_id, relation,"
    " added_by) VALUES ($1, $2, $3, $4, 'privacy.officer')"
)


def planted_cases() -> tuple[list[EventRecord], set[tuple[str, str]]]:
    """One case of each rule among the demo set's people, and the (rule, subject) each must
    raise."""
    at = MORNING + timedelta(hours=3)
    records = [
        access(ORG, "nurse.garcia", "p-vip", at),  # on the restricted list
        access(ORG, "clerk.brown", "p-brown-mother", at + timedelta(minutes=5)),  # a relative
        access(ORG, "dr.jones", "p-101", MORNING + timedelta(hours=15, minutes=30)),  # 23:30
        access(ORG, "dr.smith", "p-120", at, break_glass=True, purpose_of_use="ETREAT"),
        access(
            ORG,
            "dr.smith",
            None,
            at + timedelta(minutes=20),
            action="report.export",
            details={"record_count": 25_000, "format": "csv"},
        ),
    ]
    records += [  # a locum tenens opening 101 charts in forty minutes
        access(ORG, "dr.locum", f"p-{2000 + i}", at + timedelta(seconds=24 * i)) for i in range(101)
    ]
    records += [  # five failed sign-ins from one address in four minutes
        access(
            ORG,
            "dr.patel",
            None,
            at + timedelta(minutes=i),
            action="auth.login",
            status="failure",
            ip_address="10.66.0.9",
        )
        for i in range(5)
    ]
    expected = {
        ("restricted", "principal nurse.garcia, patient p-vip"),
        ("relationship", "principal clerk.brown, patient p-brown-mother"),
        ("after_hours", "principal dr.jones"),
        ("break_glass", "principal dr.smith, patient p-120"),
        ("bulk_export", "principal dr.smith"),
        ("volume", "principal dr.locum"),
        ("failed_sign_ins", "principal dr.patel"),
        ("failed_sign_ins", "address 10.66.0.9"),
    }
    return records, expected


async def test_each_rule_fires_on_its_planted_case_and_the_demo_traffic_stays_quiet(
    fresh_database: FreshDatabase,
) -> None:
    url = await fresh_database()
    await configure(
        url,
        (RESTRICT, (ORG, "p-vip", "vip")),
        (RELATE, (ORG, "clerk.brown", "p-brown-mother", "relative")),
    )
    # A working day of the demo set's people, ten times the demo's rate, in the day's hours.
    traffic = demo_traffic(ORG, MORNING, timedelta(hours=10), 3_000)
    planted, expected = planted_cases()
    records = sorted(traffic + planted, key=lambda r: r["timestamp"])
    await seal_records(url, records, batch_size=250)
    await examine_all(url)

    # The demo set breaks the glass now and then: each of those is a case, as it should be.
    glass = {
        ("break_glass", f"principal {r['principal_id']}, patient {r['patient_id']}")
        for r in traffic
        if r["break_glass"]
    }
    assert glass, "the demo traffic has break-glass access"
    found = await alerts(url)
    assert {(a["rule"], a["subject"]) for a in found} == expected | glass
    assert len(found) == len(expected | glass)
    by_rule = {a["rule"]: a for a in found if a["subject"] in {s for _, s in expected}}
    volume = by_rule["volume"]
    assert volume["details"] is not None
    assert len(volume["event_ids"]) == 100  # the events named: one access per patient, capped
    ids = {uuid.UUID(r["event_id"]) for r in planted}
    for alert in found:
        if (alert["rule"], alert["subject"]) in expected:
            assert set(alert["event_ids"]) <= ids, alert["rule"]
        assert alert["organization_id"] == ORG and alert["status"] == "open"
        assert alert["recorded_at"] is None


async def test_two_detectors_at_once_store_each_case_once(
    fresh_database: FreshDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.watch.detector.EXAMINED_EVENTS", 100)  # many steps, interleaved
    planted, expected = planted_cases()
    traffic = demo_traffic(ORG, MORNING, timedelta(hours=10), 2_000, seed=2)
    records = sorted(traffic + planted, key=lambda r: r["timestamp"])
    url, alone = await fresh_database(), await fresh_database()
    for database in (url, alone):
        await configure(
            database,
            (RESTRICT, (ORG, "p-vip", "vip")),
            (RELATE, (ORG, "clerk.brown", "p-brown-mother", "relative")),
        )
        await seal_records(database, records, batch_size=50)
    detectors = [Detector(Metrics.create()) for _ in range(2)]
    examined = [0, 0]

    async def run(n: int) -> None:
        conn = await asyncpg.connect(url)
        try:
            await detectors[n].book.refresh(conn)
            while step := (await detectors[n].step(conn, 0)).entries:
                examined[n] += step
        finally:
            await conn.close()

    await asyncio.gather(run(0), run(1))
    found = await alerts(url)
    assert {(a["rule"], a["subject"]) for a in found} >= expected
    assert len({a["alert_id"] for a in found}) == len(found)
    await examine_all(alone)  # one detector on the same entries
    assert {a["alert_id"] for a in found} == {a["alert_id"] for a in await alerts(alone)}
    entries = (len(records) + 49) // 50
    assert examined == [entries, entries]  # each counted whole windows
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT seq FROM watch_progress WHERE chain = 0") == entries
    finally:
        await conn.close()


async def test_a_restarted_detector_stores_no_case_twice_and_misses_none(
    fresh_database: FreshDatabase,
) -> None:
    """A volume case and a run of failed sign-ins straddle a restart: the new detector reads
    back what the old one had counted. A case stored before the restart, found again after it,
    stays one."""
    url = await fresh_database()
    at = MORNING + timedelta(hours=2)
    before = [access(ORG, "dr.locum", f"p-{i}", at + timedelta(seconds=i)) for i in range(60)]
    before += [access(ORG, "dr.busy", f"q-{i}", at + timedelta(seconds=i)) for i in range(101)]
    before += [
        access(ORG, "dr.patel", None, at + timedelta(minutes=i), action="auth.login",
               status="failure", ip_address="10.66.0.9")
        for i in range(3)
    ]  # fmt: skip
    after = [
        access(ORG, "dr.locum", f"p-{i}", at + timedelta(minutes=2, seconds=i))
        for i in range(60, 110)
    ]
    after += [
        access(ORG, "dr.busy", f"q-{i}", at + timedelta(minutes=3, seconds=i))
        for i in range(101, 120)
    ]
    after += [
        access(ORG, "dr.patel", None, at + timedelta(minutes=4 + i), action="auth.login",
               status="failure", ip_address="10.66.1.1")
        for i in range(2)
    ]  # fmt: skip
    await seal_records(url, before, batch_size=40)
    await examine_all(url)
    assert {(a["rule"], a["subject"]) for a in await alerts(url)} == {
        ("volume", "principal dr.busy")
    }
    await seal_records(url, after, batch_size=40)
    await examine_all(url, Detector(Metrics.create(), started_at=time.time()))  # a new process
    found = await alerts(url)
    assert sorted((a["rule"], a["subject"]) for a in found) == [
        ("failed_sign_ins", "principal dr.patel"),
        ("volume", "principal dr.busy"),
        ("volume", "principal dr.locum"),
    ]
    locum = next(a for a in found if a["subject"] == "principal dr.locum")
    assert len(locum["event_ids"]) == 100 and "distinct_patients" in locum["details"]


async def test_a_change_of_settings_applies_from_the_next_round(
    fresh_database: FreshDatabase,
) -> None:
    url = await fresh_database()
    detector = Detector(Metrics.create())
    await seal_records(url, [access(ORG, "dr.x", "p-vip", WEDNESDAY_10AM)])
    await examine_all(url, detector)
    assert await alerts(url) == []
    await configure(
        url,
        (RESTRICT, (ORG, "p-vip", "employee")),
        (  # written around the checks: its rule keeps running on its defaults
            "INSERT INTO watch_rule_settings (organization_id, rule, enabled, severity, params,"
            " updated_by) VALUES ($1, 'volume', true, 'high', '{\"limit\": -1}', 'x')",
            (ORG,),
        ),
        (
            "INSERT INTO watch_rule_settings (organization_id, rule, enabled, severity,"
            " updated_by) VALUES ($1, 'break_glass', false, 'low', 'x')",
            (ORG,),
        ),
    )
    at = WEDNESDAY_10AM + timedelta(hours=1)
    await seal_records(url, [access(ORG, "dr.x", "p-vip", at, break_glass=True)])
    conn = await asyncpg.connect(url)
    try:
        assert await detector.book.refresh(conn) == 1
    finally:
        await conn.close()
    await examine_all(url, detector)
    found = await alerts(url)
    assert [(a["rule"], a["severity"]) for a in found] == [("restricted", "high")]
    assert '"category": "employee"' in found[0]["details"]
    volume = detector.book(ORG).volume
    assert volume is not None and volume.limit == 100


@pytest.mark.parametrize("chain", [1, 3])
async def test_each_chain_has_its_own_progress(fresh_database: FreshDatabase, chain: int) -> None:
    url = await fresh_database()
    await seal_records(url, [access(ORG, "dr.x", "p1", WEDNESDAY_10AM, break_glass=True)], chain)
    await seal_records(url, [access(ORG, "dr.y", "p1", WEDNESDAY_10AM, break_glass=True)])
    detector = Detector(Metrics.create())
    conn = await asyncpg.connect(url)
    try:
        assert (await detector.step(conn, chain)).alerts == 1
        assert (await detector.step(conn, 0)).alerts == 1
        progress = dict(await conn.fetch("SELECT chain, seq FROM watch_progress"))
        assert progress == {0: 1, chain: 1}
    finally:
        await conn.close()
