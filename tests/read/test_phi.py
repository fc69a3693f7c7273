"""PHI access reports: independent counts, pagination, isolation (plans: test_storage)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import Service, event, wait_stored


def at(minutes: int) -> str:
    return (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


async def seed(service: Service, org: str, database_url: str) -> list[dict[str, Any]]:
    headers = await service.key(org)
    events = [
        event(
            timestamp=at(i),
            principal_id=f"dr-{i % 5}",
            patient_id=f"pt-{i % 7}",
            data_classification="PHI" if i % 4 else "INTERNAL",
            break_glass=i % 9 == 0,
            purpose_of_use="TREAT",
        )
        for i in range(140)
    ]
    assert (
        await service.client.post("/events/bulk", json=events, headers=headers)
    ).status_code == 202
    await wait_stored(database_url, org, len(events))
    return events


async def pages(service: Service, path: str, headers: dict[str, str], **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await service.client.get(path, params=query, headers=headers)
        assert resp.status_code == 200, resp.text
        items += resp.json()["items"]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return items


async def test_patient_report_matches_independent_counts(
    service: Service, org: str, database_url: str
) -> None:
    sent = await seed(service, org, database_url)
    headers = await service.key(org, ("read",))
    window = {"start": at(20), "end": at(120)}
    expected = [
        e
        for e in sent
        if e["patient_id"] == "pt-3"
        and e["data_classification"] == "PHI"
        and at(20) <= e["timestamp"] < at(120)
    ]
    got = await pages(service, "/phi-access/patients/pt-3", headers, limit=4, **window)
    assert len(got) == len(expected) > 0
    assert {g["principal_id"] for g in got} == {e["principal_id"] for e in expected}
    assert all(g["data_classification"] == "PHI" for g in got)

    summary = await pages(
        service, "/phi-access/patients/pt-3", headers, summary="true", limit=2, **window
    )
    counts = Counter(e["principal_id"] for e in expected)
    assert {s["counterpart"]: s["accesses"] for s in summary} == dict(counts)
    glass = Counter(e["principal_id"] for e in expected if e["break_glass"])
    assert {
        s["counterpart"]: s["break_glass_accesses"] for s in summary if s["break_glass_accesses"]
    } == dict(glass)


async def test_principal_report_lists_every_patient_touched(
    service: Service, org: str, database_url: str
) -> None:
    sent = await seed(service, org, database_url)
    headers = await service.key(org, ("read",))
    mine = [e for e in sent if e["principal_id"] == "dr-2" and e["data_classification"] == "PHI"]
    summary = await pages(service, "/phi-access/principals/dr-2", headers, summary="true", limit=3)
    assert {s["counterpart"]: s["accesses"] for s in summary} == dict(
        Counter(e["patient_id"] for e in mine)
    )
    first = min(e["timestamp"] for e in mine if e["patient_id"] == summary[0]["counterpart"])
    assert datetime.fromisoformat(summary[0]["first_access"]) == datetime.fromisoformat(first)
    events = await pages(service, "/phi-access/principals/dr-2", headers, limit=10)
    assert len(events) == len(mine)


async def test_reports_stay_inside_the_organization(
    service: Service, org: str, database_url: str
) -> None:
    await seed(service, org, database_url)
    stranger = await service.key(f"other-{uuid.uuid4().hex[:6]}", ("read",))
    for path in ("/phi-access/patients/pt-3", "/phi-access/principals/dr-2"):
        for summary in ("false", "true"):
            resp = await service.client.get(path, params={"summary": summary}, headers=stranger)
            assert resp.status_code == 200 and resp.json()["items"] == []
    ingest_only = await service.key(org, ("ingest",))
    resp = await service.client.get("/phi-access/patients/pt-3", headers=ingest_only)
    assert resp.status_code == 403
    bad = await service.client.get(
        "/phi-access/patients/pt-3", params={"cursor": "nope"}, headers=stranger
    )
    assert bad.status_code == 400
