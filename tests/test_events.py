"""GET /events and /events/{id}: filters, keyset pages, organization scoping."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import Service, event, wait_stored


def at(minutes: int) -> str:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    return (base + timedelta(minutes=minutes)).isoformat()


async def seed(
    service: Service, org: str, database_url: str
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    headers = await service.key(org)
    events = [
        event(
            timestamp=at(i),
            principal_id=f"user-{i % 3}",
            patient_id=f"p-{i % 4}" if i % 2 == 0 else None,
            data_classification="PHI" if i % 5 == 0 else "INTERNAL",
            status="failure" if i % 7 == 0 else "success",
            action="fhir.patient.read" if i % 2 else "fhir.observation.search",
            target_resource_type="Patient",
            target_resource_id=f"Patient/{i % 4}",
        )
        for i in range(60)
    ]
    # Two events at the same instant: the cursor must tell them apart.
    events += [event(timestamp=at(30), principal_id="twin") for _ in range(2)]
    resp = await service.client.post("/events/bulk", json=events, headers=headers)
    assert resp.status_code == 202
    await wait_stored(database_url, org, len(events))
    return headers, events


def matches(sent: dict[str, Any], params: dict[str, Any]) -> bool:
    """The filter semantics, written independently of the SQL."""
    moment = datetime.fromisoformat(sent["timestamp"])
    for key, value in params.items():
        if key == "start" and moment < datetime.fromisoformat(value):
            return False
        if key == "end" and moment >= datetime.fromisoformat(value):
            return False
        if key not in {"start", "end"} and sent.get(key) != value:
            return False
    return True


async def all_pages(
    service: Service, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await service.client.get("/events", params=query, headers=headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_pagination_returns_every_row_once_newest_first(
    service: Service, org: str, database_url: str
) -> None:
    headers, _ = await seed(service, org, database_url)
    items = await all_pages(service, headers, limit=7)
    assert len(items) == 62
    assert len({i["event_id"] for i in items}) == 62
    keys = [(i["timestamp"], i["event_id"]) for i in items]
    assert keys == sorted(keys, reverse=True)


async def test_filters_match_independent_counts(
    service: Service, org: str, database_url: str
) -> None:
    headers, sent = await seed(service, org, database_url)
    cases: list[dict[str, Any]] = [
        {"principal_id": "user-1"},
        {"patient_id": "p-2"},
        {"data_classification": "PHI"},
        {"status": "failure"},
        {"action": "fhir.patient.read"},
        {"target_resource_type": "Patient", "target_resource_id": "Patient/1"},
        {"start": at(10), "end": at(20)},
        {"start": at(30), "end": at(31)},
        {"principal_id": "user-0", "status": "failure", "end": at(40)},
    ]
    for params in cases:
        expected = sum(1 for e in sent if matches(e, params))
        items = await all_pages(service, headers, limit=5, **params)
        assert expected > 0 and len(items) == expected, params
        for item in items:
            for key, value in params.items():
                if key not in {"start", "end"}:
                    assert item[key] == value, params


async def test_organizations_never_see_each_other(
    service: Service, org: str, database_url: str
) -> None:
    headers, _ = await seed(service, org, database_url)
    other = await service.key(f"other-{uuid.uuid4().hex[:6]}")
    mine = (await service.client.get("/events", headers=headers)).json()["items"]
    assert (await service.client.get("/events", headers=other)).json()["items"] == []
    resp = await service.client.get(f"/events/{mine[0]['event_id']}", headers=other)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    same = await service.client.get(f"/events/{mine[0]['event_id']}", headers=headers)
    assert same.json() == mine[0]


async def test_bad_query_parameters_are_refused(service: Service, org: str) -> None:
    headers = await service.key(org, ("read",))
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"cursor": "garbage"}, 400, "invalid_cursor"),
        ({"limit": 0}, 422, "validation_failed"),
        ({"limit": 1001}, 422, "validation_failed"),
        ({"start": "yesterday"}, 422, "validation_failed"),
        ({"start": "0001-01-01T00:00:00+01:00"}, 422, "validation_failed"),
        ({"end": "9999-12-31T23:59:59-01:00"}, 422, "validation_failed"),
        ({"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiw1XQ"}, 400, "invalid_cursor"),
        ({"start": "2026-01-01T00:00:00"}, 422, "validation_failed"),
        ({"status": "maybe"}, 422, "validation_failed"),
        ({"colour": "red"}, 422, "validation_failed"),
    ]
    for params, status, code in cases:
        resp = await service.client.get("/events", params=params, headers=headers)
        assert resp.status_code == status, (params, resp.text)
        assert resp.json()["error"]["code"] == code
    resp = await service.client.get("/events/not-a-uuid", headers=headers)
    assert resp.status_code == 422
    resp = await service.client.get(f"/events/{uuid.uuid4()}", headers=headers)
    assert resp.status_code == 404
