"""GET /events and /events/{id}: filters, keyset pages, organization scoping."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tests.conftest import Service, event, stored_rows, wait_stored


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
            correlation_id=f"corr-{i % 6}",
            purpose_of_use="TREAT" if i % 3 else "OPERATIONS",
            break_glass=i % 11 == 0,
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
        if key == "action_prefix" and not sent["action"].startswith(value):
            return False
        if isinstance(value, list) and sent.get(key) not in value:
            return False
        if key not in {"start", "end", "action_prefix", "order"} and not isinstance(value, list):
            if sent.get(key, False if key == "break_glass" else None) != value:
                return False
    return True


def without_reads(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seeded events: each read adds an `audit.*` event to the organization as it goes."""
    return [i for i in items if not i["action"].startswith("audit.")]


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
        items += without_reads(page["items"])
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
    oldest_first = await all_pages(service, headers, limit=9, order="asc")
    assert [(i["timestamp"], i["event_id"]) for i in oldest_first] == sorted(keys)


async def test_cursor_pages_stay_stable_while_events_arrive(
    service: Service, org: str, database_url: str
) -> None:
    headers, sent = await seed(service, org, database_url)
    first = (await service.client.get("/events", params={"limit": 10}, headers=headers)).json()
    newer = [event(timestamp=at(1000 + i), principal_id="late") for i in range(5)]
    await service.client.post("/events/bulk", json=newer, headers=headers)
    await wait_stored(database_url, org, len(sent) + 5)
    rest: list[dict[str, Any]] = []
    cursor = first["next_cursor"]
    while cursor:
        page = await service.client.get(
            "/events", params={"limit": 10, "cursor": cursor}, headers=headers
        )
        rest += page.json()["items"]
        cursor = page.json()["next_cursor"]
    ids = [i["event_id"] for i in without_reads(first["items"] + rest)]
    assert len(ids) == len(set(ids)) == len(sent)  # the late ones sort before the first page


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
        {"action": ["fhir.patient.read", "fhir.observation.search"], "status": ["failure"]},
        {"action_prefix": "fhir.observation."},
        {"data_classification": ["PHI", "CONFIDENTIAL"]},
        {"correlation_id": "corr-2"},
        {"purpose_of_use": "OPERATIONS", "break_glass": True},
        {"break_glass": False, "order": "asc"},
    ]
    for params in cases:
        expected = sum(1 for e in sent if matches(e, params))
        items = await all_pages(service, headers, limit=5, **params)
        assert expected > 0 and len(items) == expected, params
        for item in items:
            for key, value in params.items():
                if key in {"start", "end", "action_prefix", "order"}:
                    continue
                assert item[key] in value if isinstance(value, list) else item[key] == value


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
        ({"order": "sideways"}, 422, "validation_failed"),
        ({"action_prefix": "fhir%"}, 422, "validation_failed"),
        ({"action": [f"a{i}" for i in range(21)]}, 422, "validation_failed"),
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


async def test_every_read_is_itself_recorded_and_sealed(
    service: Service, org: str, database_url: str
) -> None:
    headers, sent = await seed(service, org, database_url)
    page = await service.client.get(
        "/events", params={"patient_id": "p-2", "limit": 3}, headers=headers
    )
    event_id = page.json()["items"][0]["event_id"]
    await service.client.get(f"/events/{event_id}", headers=headers)
    await service.client.get(f"/events/{event_id}/proof", headers=headers)
    await wait_stored(database_url, org, len(sent) + 3)
    reads = (
        await service.client.get("/events", params={"action_prefix": "audit."}, headers=headers)
    ).json()["items"]
    by_action = {r["action"]: r for r in reads}
    assert set(by_action) >= {"audit.query", "audit.read", "audit.proof"}
    query = by_action["audit.query"]
    assert query["organization_id"] == org and query["principal_type"] == "api_key"
    assert query["details"]["query"]["patient_id"] == "p-2"
    assert query["details"]["rows"] == 3
    proof = await service.client.get(f"/events/{query['event_id']}/proof", headers=headers)
    assert proof.status_code == 200  # sealed like any other event


async def test_exports_stream_every_matching_event_and_parse_back(
    service: Service, org: str, database_url: str
) -> None:
    headers, sent = await seed(service, org, database_url)
    params = {"action_prefix": "fhir.", "status": ["success"]}
    expected = sum(1 for e in sent if e["status"] == "success")
    ndjson = await service.client.get("/events/export", params=params, headers=headers)
    assert ndjson.status_code == 200
    assert ndjson.headers["content-disposition"].startswith('attachment; filename="audit-events-')
    lines = without_reads([orjson.loads(line) for line in ndjson.content.splitlines()])
    assert len(lines) == expected == len({x["event_id"] for x in lines})
    assert all(x["organization_id"] == org and x["status"] == "success" for x in lines)

    as_csv = await service.client.get(
        "/events/export", params={**params, "format": "csv"}, headers=headers
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = [r for r in csv.DictReader(io.StringIO(as_csv.text)) if r["action"].startswith("fhir.")]
    assert len(rows) == expected
    assert {r["event_id"] for r in rows} == {x["event_id"] for x in lines}
    assert rows[0]["hash"] == next(x["hash"] for x in lines if x["event_id"] == rows[0]["event_id"])

    stranger = f"other-{uuid.uuid4().hex[:6]}"
    other = await service.key(stranger)
    theirs = (await service.client.get("/events/export", headers=other)).content.splitlines()
    # At most their own record of this very export: never an event of `org`.
    assert all(orjson.loads(x)["organization_id"] == stranger for x in theirs)
    assert without_reads([orjson.loads(x) for x in theirs]) == []
    refused = await service.client.get("/events/export", params={"limit": 5}, headers=headers)
    assert refused.status_code == 422


async def test_csv_export_defuses_formulas_and_the_export_is_recorded(
    service: Service, org: str, database_url: str
) -> None:
    headers = await service.key(org)
    evil = event(principal_id='=HYPERLINK("http://x")', outcome_description="@SUM(1)")
    await service.client.post("/events", json=evil, headers=headers)
    await wait_stored(database_url, org, 1)
    body = (
        await service.client.get("/events/export", params={"format": "csv"}, headers=headers)
    ).text
    row = next(r for r in csv.DictReader(io.StringIO(body)) if r["action"] == "fhir.patient.read")
    assert row["principal_id"] == '\'=HYPERLINK("http://x")'
    assert row["outcome_description"] == "'@SUM(1)"
    await wait_stored(database_url, org, 3)  # the event, and the export's start and end
    rows = await stored_rows(database_url, org)
    phases = sorted(
        orjson.loads(r["details"])["query"]["phase"] for r in rows if r["action"] == "audit.export"
    )
    assert phases == ["complete", "start"]


async def test_ndjson_export_lines_are_the_events_the_api_shows(
    service: Service, org: str, database_url: str
) -> None:
    headers, _ = await seed(service, org, database_url)
    params = {"patient_id": "p-2"}
    shown = (await service.client.get("/events", params=params, headers=headers)).json()["items"]
    body = await service.client.get("/events/export", params=params, headers=headers)
    lines = [orjson.loads(line) for line in body.content.splitlines()]
    assert [x["event_id"] for x in lines] == [x["event_id"] for x in shown]
    for line, item in zip(lines, shown, strict=True):
        assert line.keys() >= item.keys()
        for key, value in item.items():
            if key in {"timestamp", "received_at"}:  # the export writes the canonical form
                assert line[key].endswith("Z") and len(line[key]) == 27
                assert datetime.fromisoformat(line[key]) == datetime.fromisoformat(value)
            else:
                assert line[key] == value, key


async def test_ndjson_export_escapes_every_text_field(
    service: Service, org: str, database_url: str
) -> None:
    headers = await service.key(org)
    nasty = 'a "quoted" \\ back\\slash, tab\t, newline\n, bell\x07, ünïcødé 𝄞 </script>'
    sent = [
        event(
            principal_id=nasty,
            outcome_description=nasty,
            correlation_id=nasty,
            target_resource_id=nasty,
            break_glass=True,
            session_context={"session_id": nasty, "user_agent": nasty},
            details={"k": [nasty, 1.5, None, {"deep": True}]},
        ),
        event(principal_id="plain", details=None),
    ]
    assert (
        await service.client.post("/events/bulk", json=sent, headers=headers)
    ).status_code == 202
    await wait_stored(database_url, org, 2)
    shown = (await service.client.get("/events", headers=headers)).json()["items"]
    body = await service.client.get("/events/export", headers=headers)
    lines = {x["event_id"]: x for x in map(orjson.loads, body.content.splitlines())}
    for item in shown:
        line = lines[item["event_id"]]
        for key, value in item.items():
            if key not in {"timestamp", "received_at"}:
                assert line[key] == value, key
    assert {x["principal_id"] for x in lines.values()} >= {nasty, "plain"}
