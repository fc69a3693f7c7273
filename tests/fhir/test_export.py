"""GET /events/export?format=fhir: a FHIR R4 Bundle of AuditEvents, checked with a FHIR model
library (fhir.resources; its R4B AuditEvent and Bundle are the R4 definitions)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from app.fhir import codes
from tests.conftest import Service, event, wait_stored


def sent_events() -> list[dict[str, Any]]:
    return [
        event(
            action="fhir.patient.read",
            status="success",
            patient_id="pat-1",
            purpose_of_use="TREAT",
            session_context={"session_id": "s-1", "ip_address": "10.0.0.7", "user_agent": "ua"},
            details={"fields": ["name"]},
            correlation_id="req-1",
        ),
        event(action="auth.login", status="failure", data_classification="INTERNAL"),
        event(
            action="ehr.chart.open",
            status="attempt",
            patient_id="pat-2",
            purpose_of_use="ETREAT",
            break_glass=True,
            outcome_description="emergency access",
        ),
        event(action="report.export", status="success", data_classification="CONFIDENTIAL"),
    ]


def without_reads(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave out the service's own records of reads (`audit.*` events)."""
    return [r for r in resources if not r["subtype"][0]["code"].startswith("audit.")]


async def test_fhir_export_is_a_valid_r4_bundle_with_the_mapping(
    service: Service, org: str, database_url: str
) -> None:
    headers = await service.key(org)
    sent = sent_events()
    assert (
        await service.client.post("/events/bulk", json=sent, headers=headers)
    ).status_code == 202
    await wait_stored(database_url, org, len(sent))

    resp = await service.client.get("/events/export", params={"format": "fhir"}, headers=headers)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/fhir+json")
    assert resp.headers["content-disposition"].endswith('.json"')
    body = orjson.loads(resp.content)
    Bundle.model_validate(body)
    assert body["resourceType"] == "Bundle" and body["type"] == "collection"
    resources = [entry["resource"] for entry in body["entry"]]
    for resource in resources:
        AuditEvent.model_validate(resource)
        # Required by the R4 definition (1..1 / 1..*), which the library does not all enforce.
        assert {"type", "recorded", "agent", "source"} <= set(resource)
        assert resource["source"]["observer"] and all(
            isinstance(a["requestor"], bool) for a in resource["agent"]
        )
    by_action = {r["subtype"][0]["code"]: r for r in without_reads(resources)}
    assert set(by_action) == {e["action"] for e in sent}

    read = by_action["fhir.patient.read"]
    assert read["type"]["code"] == "rest" and read["action"] == "R" and read["outcome"] == "0"
    assert {"system": codes.RESTFUL, "code": "read"} in read["subtype"]
    assert read["agent"][0]["who"]["identifier"]["value"] == sent[0]["principal_id"]
    assert read["agent"][0]["network"] == {"address": "10.0.0.7", "type": "2"}
    patient = next(e for e in read["entity"] if e.get("role", {}).get("code") == "1")
    assert patient["what"]["identifier"]["value"] == "pat-1"
    assert read["purposeOfEvent"] == [{"coding": [{"system": codes.ACT_REASON, "code": "TREAT"}]}]
    request_id = next(e for e in read["entity"] if e["type"]["code"] == codes.REQUEST_ID)
    assert request_id == {
        "what": {"identifier": {"value": "req-1"}},
        "type": {
            "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
            "code": "XrequestId",
            "display": codes.REQUEST_ID_DISPLAY,
        },
    }
    record = read["entity"][-1]
    assert record["what"]["identifier"]["value"] == read["id"]
    assert "correlation_id" not in {d["type"] for d in record["detail"]}

    login = by_action["auth.login"]
    assert login["outcome"] == "8" and login["type"]["code"] == "110114" and login["action"] == "E"
    chart = by_action["ehr.chart.open"]
    assert chart["outcome"] == "4" and chart["outcomeDesc"] == "emergency access"
    purposes = {c["code"] for p in chart["purposeOfEvent"] for c in p["coding"]}
    assert purposes == {"ETREAT", "BTG"}
    assert by_action["report.export"]["type"]["code"] == "110106"


async def test_fhir_export_is_scoped_and_valid_when_empty(
    service: Service, org: str, database_url: str
) -> None:
    headers = await service.key(org)
    await service.client.post("/events", json=event(patient_id="pat-9"), headers=headers)
    await wait_stored(database_url, org, 1)
    stranger = await service.key(f"other-{uuid.uuid4().hex[:6]}")
    theirs = await service.client.get(
        "/events/export", params={"format": "fhir", "action": "fhir.patient.read"}, headers=stranger
    )
    body = orjson.loads(theirs.content)
    Bundle.model_validate(body)
    assert "entry" not in body  # FHIR JSON has no empty arrays
    mine = await service.client.get(
        "/events/export", params={"format": "fhir", "patient_id": "pat-9"}, headers=headers
    )
    entries = orjson.loads(mine.content)["entry"]
    assert [e["resource"]["source"]["site"] for e in entries] == [org]
