"""POST /fhir/AuditEvent: FHIR R4 AuditEvents in, as FHIR servers emit them under the IHE Basic
Audit Log Patterns, one or a Bundle; an export imported again keeps every field a client sent;
what cannot be mapped is refused whole, with the entry and the FHIR path named."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from app.fhir.intake import event_of
from loadtests.faults.content import CLIENT_COLUMNS, SESSION_COLUMNS
from tests.conftest import Service, SettingsFactory, event, running, stored_rows, wait_stored

# What a client sends: the columns that hold its fields, the session and details flattened.
CLIENT_FIELDS = (
    "event_id",
    "timestamp",
    *CLIENT_COLUMNS,
    *SESSION_COLUMNS,
    "details",
)
FHIR = {"Content-Type": "application/fhir+json"}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"


def sent_events() -> list[dict[str, Any]]:
    """Events using every field, of several kinds, all in November 2026."""
    return [
        event(
            event_id=str(uuid.uuid4()),
            timestamp="2026-11-03T08:15:00.123456Z",
            action="fhir.observation.read",
            principal_type="practitioner",
            patient_id="p-123",
            target_resource_type="Observation",
            target_resource_id="Observation/o-77",
            data_classification="PHI",
            purpose_of_use="TREAT",
            break_glass=True,
            correlation_id="req-1",
            session_context={"session_id": "s-1", "ip_address": "10.1.2.3", "user_agent": "EHR/1"},
            details={"fields": ["name", "dob"], "count": 2, "ratio": 0.5, "nested": {"a": None}},
            priority="high",
        ),
        event(
            event_id=str(uuid.uuid4()),
            timestamp="2026-11-03T09:00:00+02:00",
            action="auth.login",
            status="failure",
            principal_id="mallory",
            outcome_description="bad password",
            session_context={"ip_address": "2001:db8::1"},
        ),
        event(
            event_id=str(uuid.uuid4()),
            timestamp="2026-11-04T10:00:00Z",
            action="report.export",
            status="attempt",
            target_resource_type="Report",
            data_classification="CONFIDENTIAL",
        ),
    ]


def stored_fields(row: Any) -> dict[str, Any]:
    values = {name: row[name] for name in CLIENT_FIELDS}
    values["event_id"] = str(values["event_id"])
    values["details"] = orjson.loads(values["details"]) if values["details"] else None
    return values


async def _ingest_key(svc: Service, org: str) -> dict[str, str]:
    return await svc.key(org, ("ingest", "priority"))


async def test_an_export_imported_again_keeps_every_field(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    other = f"{org}-import"
    async with running(settings_factory()) as svc:
        source = await svc.key(org)
        posted = await svc.client.post("/events/bulk", json=sent_events(), headers=source)
        assert posted.status_code == 202, posted.text
        await wait_stored(database_url, org, 3)
        exported = await svc.client.get(
            "/events/export?format=fhir&start=2026-11-01T00:00:00Z&end=2026-12-01T00:00:00Z",
            headers=source,
        )
        assert exported.status_code == 200
        bundle = exported.json()
        assert len(bundle["entry"]) == 3
        importer = {**FHIR, **await _ingest_key(svc, other)}
        imported = await svc.client.post(
            "/fhir/AuditEvent",
            content=exported.content,
            headers=importer,
        )
        # The correlation id rides as BALP's X-Request-Id entity, as FHIR servers send it.
        request_ids = [
            entity["what"]["identifier"]["value"]
            for entry in bundle["entry"]
            for entity in entry["resource"]["entity"]
            if entity.get("type", {}).get("code") == "XrequestId"
        ]
        assert request_ids == ["req-1"]
        assert imported.status_code == 202, imported.text
        assert imported.json()["accepted"] == 3
        await wait_stored(database_url, other, 3)
        sent = set(posted.json()["event_ids"])
        source_rows = await stored_rows(database_url, org)  # with its recorded reads: left out
        before = {str(r["event_id"]): stored_fields(r) for r in source_rows}
        imported_rows = await stored_rows(database_url, other)
        after = {str(r["event_id"]): stored_fields(r) for r in imported_rows}
        assert set(after) == sent
        assert after == {key: before[key] for key in sent}
        # One resource alone, not in a Bundle, is taken too (here: already stored, so once).
        one = await svc.client.post(
            "/fhir/AuditEvent",
            content=orjson.dumps(bundle["entry"][1]["resource"]),
            headers=importer,
        )
        assert one.status_code == 202 and one.json()["accepted"] == 1


def balp_read() -> dict[str, Any]:
    """A read of an Observation, as a FHIR server logs it (IHE BALP, R4)."""
    return {
        "resourceType": "AuditEvent",
        "id": "server-local-id-1",
        "type": {
            "system": f"{TERMINOLOGY}/audit-event-type",
            "code": "rest",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R",
        "recorded": "2026-11-20T12:00:00.5+01:00",
        "outcome": "0",
        "purposeOfEvent": [
            {
                "coding": [
                    {
                        "system": f"{TERMINOLOGY}/v3-ActReason",
                        "code": "TREAT",
                    }
                ]
            }
        ],
        "agent": [
            {
                "type": {"coding": [{"system": DCM, "code": "110153"}]},
                "who": {"display": "the FHIR server"},
                "requestor": False,
            },
            {
                "type": {"text": "practitioner"},
                "who": {"reference": "Practitioner/pr-9"},
                "requestor": True,
                "network": {"address": "192.0.2.7", "type": "2"},
            },
        ],
        "source": {"observer": {"display": "fhir.example.org"}},
        "entity": [
            {
                "what": {"reference": "Observation/o-5"},
                "type": {
                    "system": f"{TERMINOLOGY}/audit-entity-type",
                    "code": "2",
                },
            },
            {
                "what": {"reference": "Patient/ex-1"},
                "role": {
                    "system": f"{TERMINOLOGY}/object-role",
                    "code": "1",
                },
            },
        ],
    }


REQUEST_ID = "5d9f1c2a-7b3e-4e8a-9c41-0f6b2d7e8a13"  # the X-Request-Id of the update


def balp_patient_update() -> dict[str, Any]:
    """A successful update of a Patient, as a FHIR server logs it under the IHE BALP
    PatientUpdate profile: the data entity (the Patient resource, role Domain Resource), the
    Patient entity (role Patient), and the transaction's X-Request-Id."""
    return {
        "resourceType": "AuditEvent",
        "id": "ex-auditBasicPatientUpdate",
        "meta": {
            "profile": [
                "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientUpdate"
            ]
        },
        "type": {
            "system": f"{TERMINOLOGY}/audit-event-type",
            "code": "rest",
            "display": "Restful Operation",
        },
        "subtype": [
            {"system": "http://hl7.org/fhir/restful-interaction", "code": "update"},
        ],
        "action": "U",
        "recorded": "2026-11-21T09:30:00.250Z",
        "outcome": "0",
        "agent": [
            {
                "type": {
                    "coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]
                },
                "who": {"identifier": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "ehr"}},
                "requestor": False,
                "network": {"address": "2001:db8::7", "type": "2"},
            },
            {
                "type": {
                    "coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]
                },
                "who": {"display": "fhir.example.org"},
                "requestor": False,
                "network": {"address": "http://fhir.example.org/fhir", "type": "5"},
            },
            {
                "type": {"text": "practitioner"},
                "who": {"identifier": {"value": "dr.jones"}},
                "requestor": True,
            },
        ],
        "source": {
            "observer": {"display": "fhir.example.org"},
            "type": [
                {"system": f"{TERMINOLOGY}/security-source-type", "code": "4"},
            ],
        },
        "entity": [
            {
                "what": {"reference": "Patient/ex-patient/_history/2"},
                "type": {
                    "system": f"{TERMINOLOGY}/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
                "role": {
                    "system": f"{TERMINOLOGY}/object-role",
                    "code": "4",
                    "display": "Domain Resource",
                },
            },
            {
                "what": {"reference": "Patient/ex-patient"},
                "type": {
                    "system": f"{TERMINOLOGY}/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
                "role": {"system": f"{TERMINOLOGY}/object-role", "code": "1", "display": "Patient"},
            },
            {
                "what": {"identifier": {"value": REQUEST_ID}},
                "type": {
                    "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                    "code": "XrequestId",
                },
            },
        ],
    }


async def test_a_balp_patient_update_keeps_its_request_id_apart_from_its_target(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    """The X-Request-Id entity is the event's correlation id, not its target: the target is
    the data entity, so the action names the resource updated."""
    async with running(settings_factory()) as svc:
        key = await svc.key(org, ("ingest", "read"))
        answer = await svc.client.post(
            "/fhir/AuditEvent",
            content=orjson.dumps(balp_patient_update()),
            headers={**FHIR, **key},
        )
        assert answer.status_code == 202, answer.text
        await wait_stored(database_url, org, 1)
        [row] = await stored_rows(database_url, org)
        assert (row["action"], row["status"], row["principal_id"]) == (
            "fhir.patient.update",
            "success",
            "dr.jones",
        )
        assert row["correlation_id"] == REQUEST_ID
        assert (row["patient_id"], row["data_classification"]) == ("ex-patient", "PHI")
        assert (row["target_resource_type"], row["target_resource_id"]) == (
            "Patient",
            "Patient/ex-patient/_history/2",
        )
        assert row["details"] is None
        found = await svc.client.get(f"/events?correlation_id={REQUEST_ID}", headers=key)
        assert [e["action"] for e in found.json()["items"]] == ["fhir.patient.update"]


def test_request_ids_and_data_entities_are_told_apart() -> None:
    """The mapping alone (no service): older exports' correlation id, the BALP code system
    written with http, and a Patient data entity with no patient entity beside it."""
    update = balp_patient_update()
    data, patient, request_id = update["entity"]
    request_id["type"]["system"] = request_id["type"]["system"].replace("https:", "http:")
    mapped = event_of({**update, "entity": [request_id, patient, data]})
    assert (mapped["correlation_id"], mapped["action"]) == (REQUEST_ID, "fhir.patient.update")
    alone = event_of({**update, "entity": [request_id, data]})
    assert (alone["patient_id"], alone["target_resource_id"]) == (
        "ex-patient",
        "Patient/ex-patient/_history/2",
    )
    old_record = {
        "what": {"identifier": {"system": "urn:audit-ingest:event", "value": str(uuid.uuid4())}},
        "detail": [{"type": "correlation_id", "valueString": "req-9"}],
    }
    assert event_of({**balp_login(), "entity": [old_record]})["correlation_id"] == "req-9"


def balp_login() -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": "110114"},
        "subtype": [{"system": DCM, "code": "110122"}],
        "recorded": "2026-11-20T11:59:00Z",
        "outcome": "8",
        "outcomeDesc": "locked out",
        "agent": [
            {"who": {"identifier": {"value": "nurse.lee"}}, "name": "Lee", "requestor": True}
        ],
        "source": {"observer": {"display": "idp"}},
    }


async def test_audit_events_of_a_fhir_server_are_mapped(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    body = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": balp_read()}, {"resource": balp_login()}],
    }
    async with running(settings_factory()) as svc:
        answer = await svc.client.post(
            "/fhir/AuditEvent",
            content=orjson.dumps(body),
            headers={**FHIR, **await svc.key(org, ("ingest",))},
        )
        assert answer.status_code == 202, answer.text
        await wait_stored(database_url, org, 2)
        rows = {r["action"]: r for r in await stored_rows(database_url, org)}
    read = rows["fhir.observation.read"]
    assert (read["principal_id"], read["principal_type"]) == ("Practitioner/pr-9", "practitioner")
    assert (read["patient_id"], read["data_classification"]) == ("ex-1", "PHI")
    assert (read["target_resource_type"], read["target_resource_id"]) == (
        "Observation",
        "Observation/o-5",
    )
    assert (read["purpose_of_use"], read["break_glass"], read["status"]) == (
        "TREAT",
        False,
        "success",
    )
    assert read["ip_address"] == "192.0.2.7"
    assert read["timestamp"].isoformat() == "2026-11-20T11:00:00.500000+00:00"
    login = rows["auth.login"]
    assert (login["principal_id"], login["status"]) == ("nurse.lee", "failure")
    assert (login["outcome_description"], login["data_classification"]) == (
        "locked out",
        "INTERNAL",
    )


async def test_what_cannot_be_mapped_is_refused_whole(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    no_agent = {**balp_read(), "agent": []}
    reserved = {
        **balp_login(),
        "subtype": [{"system": "urn:audit-ingest:action", "code": "audit.read"}],
    }
    async with running(settings_factory(run_writers=False)) as svc:
        headers = {**FHIR, **await svc.key(org, ("ingest",))}

        async def post(body: Any, extra: dict[str, str] | None = None) -> Any:
            content = body if isinstance(body, bytes) else orjson.dumps(body)
            return await svc.client.post(
                "/fhir/AuditEvent", content=content, headers={**headers, **(extra or {})}
            )

        patient = await post({"resourceType": "Patient", "id": "x"})
        assert patient.status_code == 422
        assert patient.json()["error"]["details"][0]["field"] == "resourceType"
        mixed = await post(
            {"resourceType": "Bundle", "entry": [{"resource": balp_read()}, {"resource": no_agent}]}
        )
        assert mixed.status_code == 422, mixed.text
        problem = mixed.json()["error"]["details"][0]
        assert (problem["index"], problem["field"]) == (1, "agent")
        refused = await post({"resourceType": "Bundle", "entry": [{"resource": reserved}]})
        assert refused.status_code == 422
        assert refused.json()["error"]["details"][0]["type"] == "reserved_action"
        assert (await post(b"{not json")).status_code == 400
        record = {"system": "urn:audit-ingest:event", "value": "x"}
        wrongs: list[dict[str, Any]] = [
            {"outcome": []},
            {"subtype": {"coding": 5}},
            {"entity": [{"what": {"identifier": record}, "detail": 5}]},
            {"agent": [{"who": {"identifier": "s"}, "requestor": True}]},
        ]
        for wrong in wrongs:
            answer = await post({**balp_read(), **wrong})
            assert answer.status_code == 422, (wrong, answer.text)
        assert (await post(balp_login(), {"Content-Type": "text/plain"})).status_code == 415
        assert await svc.app.state.resources.stream.queued_events() == 0
        assert (await post(balp_login(), {"Content-Type": "application/json"})).status_code == 202


EVENT_WITH_DETAILS = b'{"action":"x.y","status":"success","principal_id":"p","details":DETAILS}'


def nested(depth: int) -> str:
    """A `details` object `depth` levels deep (the object itself is the first level)."""
    return '{"d":' + "[" * (depth - 1) + "0" + "]" * (depth - 1) + "}"


def exported_with_details(details: str) -> dict[str, Any]:
    """A login whose details ride in the export's record entity, as a JSON string."""
    record = {
        "what": {"identifier": {"system": "urn:audit-ingest:event", "value": str(uuid.uuid4())}},
        "detail": [{"type": "details", "valueString": details}],
    }
    return {**balp_login(), "entity": [record]}


async def test_details_nested_too_deep_are_the_same_400_on_both_intakes(
    settings_factory: SettingsFactory, org: str
) -> None:
    """Past the JSON parser's nesting limit (200 levels, the event around them included),
    details are refused alike by POST /events and POST /fhir/AuditEvent; never a 500."""
    async with running(settings_factory(run_writers=False)) as svc:
        key = await svc.key(org, ("ingest",))
        json_body = {**key, "Content-Type": "application/json"}
        for depth in (100, 254, 255, 256, 600, 1024):
            one = EVENT_WITH_DETAILS.replace(b"DETAILS", nested(depth).encode())
            answers = [
                await svc.client.post("/events", content=one, headers=json_body),
                await svc.client.post("/events/bulk", content=b"[%s]" % one, headers=json_body),
                await svc.client.post(
                    "/fhir/AuditEvent",
                    content=orjson.dumps(exported_with_details(nested(depth))),
                    headers={**FHIR, **key},
                ),
            ]
            statuses = [answer.status_code for answer in answers]
            if depth == 100:
                assert statuses == [202, 202, 202], answers[-1].text
                continue
            assert statuses == [400, 400, 400], (depth, answers[-1].text)
            for answer in answers:
                error = answer.json()["error"]
                assert set(error) == {"code", "message", "details"}
                assert error["code"] == "json_too_deep", (depth, error)
                assert error["details"] == {"max_depth": 200}
