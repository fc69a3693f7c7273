"""Audit events as FHIR R4 AuditEvent resources, streamed as a Bundle of type `collection`.

The mapping, field by field:
- `id` is the event id; `recorded` its timestamp (UTC, microseconds).
- `type`: FHIR REST actions (`fhir.*`) are `audit-event-type#rest`; logins and logouts
  (`auth.*`) DICOM 110114 User Authentication; exports (`*.export`) DICOM 110106 Export; other
  actions about a patient DICOM 110110 Patient Record; the rest DICOM 110100 Application
  Activity. `subtype` always carries the action itself (system `urn:audit-ingest:action`), and
  for `fhir.*` actions the RESTful interaction too.
- `action` (C/R/U/D/E) comes from the action's last word (create, read, update, delete; search,
  login and the like execute).
- `outcome`: success 0, attempt 4, failure 8 (R4 has no "unknown"; an attempt did not succeed
  as far as the audit trail knows), `outcomeDesc` the outcome description.
- `purposeOfEvent`: the purpose of use (v3 ActReason), plus BTG when break-glass was used.
- `agent`: the principal (type user or service), requestor, with its network address; the
  session id and user agent ride in extensions.
- `source`: the organization, observed by this service.
- `entity`: the target resource, the patient (role Patient), the correlation id as IHE BALP's
  transaction entity (type `XrequestId`, the value in `what.identifier.value`, as FHIR servers
  log their X-Request-Id), and the stored record itself with its details, hash, signature and
  key id, so the integrity data travels along.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from app.core.timefmt import format_timestamp
from app.fhir.codes import (
    ACT_REASON,
    ACTION_SYSTEM,
    BALP_ENTITY_TYPE,
    DCM,
    ENTITY_TYPE,
    EVENT_SYSTEM,
    EVENT_TYPE,
    OBJECT_ROLE,
    ORGANIZATION_SYSTEM,
    PATIENT_SYSTEM,
    PRINCIPAL_SYSTEM,
    REQUEST_ID,
    REQUEST_ID_DISPLAY,
    RESTFUL,
    SESSION_EXTENSION,
    SOURCE_TYPE,
    USER_AGENT_EXTENSION,
)

OUTCOMES = {"success": "0", "attempt": "4", "failure": "8"}

VERB_ACTIONS = {
    "create": "C",
    "add": "C",
    "post": "C",
    "read": "R",
    "view": "R",
    "open": "R",
    "get": "R",
    "vread": "R",
    "export": "R",
    "print": "R",
    "download": "R",
    "update": "U",
    "patch": "U",
    "edit": "U",
    "delete": "D",
    "remove": "D",
}

RESTFUL_INTERACTIONS = {
    "read": "read",
    "vread": "vread",
    "search": "search-type",
    "create": "create",
    "update": "update",
    "patch": "patch",
    "delete": "delete",
    "history": "history-instance",
}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _event_type(action: str, has_patient: bool) -> dict[str, str]:
    if action.startswith("fhir."):
        return _coding(EVENT_TYPE, "rest", "RESTful Operation")
    if action.startswith("auth."):
        return _coding(DCM, "110114", "User Authentication")
    if action.endswith(".export"):
        return _coding(DCM, "110106", "Export")
    if has_patient:
        return _coding(DCM, "110110", "Patient Record")
    return _coding(DCM, "110100", "Application Activity")


def _subtypes(action: str, verb: str) -> list[dict[str, str]]:
    subtypes = [_coding(ACTION_SYSTEM, action)]
    if action.startswith("fhir.") and verb in RESTFUL_INTERACTIONS:
        subtypes.append(_coding(RESTFUL, RESTFUL_INTERACTIONS[verb]))
    return subtypes


def _agent(event: Mapping[str, Any]) -> dict[str, Any]:
    session = event.get("session_context") or {}
    agent: dict[str, Any] = {
        "who": {"identifier": {"system": PRINCIPAL_SYSTEM, "value": event["principal_id"]}},
        "requestor": True,
    }
    kind = event.get("principal_type")
    if kind:
        agent["type"] = {"text": kind}
    extensions = [
        {"url": url, "valueString": session[name]}
        for url, name in ((SESSION_EXTENSION, "session_id"), (USER_AGENT_EXTENSION, "user_agent"))
        if session.get(name)
    ]
    if extensions:
        agent["extension"] = extensions
    if session.get("ip_address"):
        agent["network"] = {"address": session["ip_address"], "type": "2"}
    return agent


def _b64(hex_text: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_text)).decode()


def _record_entity(event: Mapping[str, Any]) -> dict[str, Any]:
    detail: list[dict[str, str]] = []
    if event.get("details") is not None:
        text = orjson.dumps(event["details"], option=orjson.OPT_SORT_KEYS).decode()
        detail.append({"type": "details", "valueString": text})
    detail += [
        {"type": "event_hash_sha256", "valueBase64Binary": _b64(event["hash"])},
        {"type": "signature_hmac_sha256", "valueBase64Binary": _b64(event["signature"])},
        {"type": "key_id", "valueString": event["key_id"]},
        *(
            [{"type": "api_key_id", "valueString": str(event["api_key_id"])}]
            if event.get("api_key_id")
            else []
        ),
        {"type": "priority", "valueString": event["priority"]},
        {"type": "data_classification", "valueString": event["data_classification"]},
    ]
    return {
        "what": {"identifier": {"system": EVENT_SYSTEM, "value": str(event["event_id"])}},
        "type": _coding(ENTITY_TYPE, "4", "Other"),
        "description": "the stored audit record",
        "detail": detail,
    }


def _entities(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    kind, target = event.get("target_resource_type"), event.get("target_resource_id")
    if kind or target:
        what: dict[str, Any] = {"display": kind or "resource"}
        if target:
            system = f"urn:audit-ingest:resource:{kind}" if kind else "urn:audit-ingest:resource"
            what["identifier"] = {"system": system, "value": target}
        entities.append({"what": what, "type": _coding(ENTITY_TYPE, "2", "System Object")})
    if event.get("patient_id"):
        entities.append(
            {
                "what": {
                    "type": "Patient",
                    "identifier": {"system": PATIENT_SYSTEM, "value": event["patient_id"]},
                },
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    if event.get("correlation_id"):
        entities.append(
            {
                "what": {"identifier": {"value": event["correlation_id"]}},
                "type": _coding(BALP_ENTITY_TYPE, REQUEST_ID, REQUEST_ID_DISPLAY),
            }
        )
    entities.append(_record_entity(event))
    return entities


def _purposes(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    purposes = []
    if event.get("purpose_of_use"):
        purposes.append({"coding": [_coding(ACT_REASON, event["purpose_of_use"])]})
    if event.get("break_glass"):
        purposes.append({"coding": [_coding(ACT_REASON, "BTG", "break the glass")]})
    return purposes


def _when(value: Any) -> str:
    return format_timestamp(value) if isinstance(value, datetime) else str(value)


def audit_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """One stored event (as the API shows it) as a FHIR R4 AuditEvent."""
    action: str = event["action"]
    verb = action.rsplit(".", 1)[-1].lower()
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event["event_id"]),
        "type": _event_type(action, bool(event.get("patient_id"))),
        "subtype": _subtypes(action, verb),
        "action": VERB_ACTIONS.get(verb, "E"),
        "recorded": _when(event["timestamp"]),
        "outcome": OUTCOMES[event["status"]],
        "agent": [_agent(event)],
        "source": {
            "site": event["organization_id"],
            "observer": {
                "identifier": {"system": ORGANIZATION_SYSTEM, "value": event["organization_id"]}
            },
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": _entities(event),
    }
    if event.get("outcome_description"):
        resource["outcomeDesc"] = event["outcome_description"]
    purposes = _purposes(event)
    if purposes:
        resource["purposeOfEvent"] = purposes
    return resource


def bundle_entry(event: Mapping[str, Any]) -> bytes:
    entry = {"fullUrl": f"urn:uuid:{event['event_id']}", "resource": audit_event(event)}
    return orjson.dumps(entry)


def bundle_head(now: datetime | None = None) -> bytes:
    """The Bundle without its closing brace; the entries, if any, follow."""
    stamp = format_timestamp(now or datetime.now(UTC))
    head = orjson.dumps(
        {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "collection",
            "timestamp": stamp,
        }
    )
    return head[:-1]


async def bundle(events: AsyncIterator[Mapping[str, Any]]) -> AsyncIterator[bytes]:
    """A Bundle of type collection, one AuditEvent per event, written as the events come.
    FHIR JSON has no empty arrays: with no events the Bundle has no `entry` at all."""
    yield bundle_head()
    separator = b',"entry":['
    async for event in events:
        yield separator + bundle_entry(event)
        separator = b","
    yield b"}" if separator.startswith(b',"') else b"]}"
