"""FHIR R4 AuditEvent resources into events (v1): `POST /fhir/AuditEvent` takes one resource or
a Bundle of them, as FHIR servers emit under the IHE Basic Audit Log Patterns, and this module
maps each to the JSON event `POST /events` takes. It is the inverse of the export's mapping
(app.fhir.export): an exported Bundle imported again keeps every field a client sent.

Field by field, what a resource gives:
- `event_id` its `id` when that is a UUID, else one derived from the id (a resource sent
  again is stored once); `timestamp` its `recorded`.
- `action`: the subtype of system `urn:audit-ingest:action` when present (the export's);
  else from the type and subtype: `rest` with a RESTful interaction gives
  `fhir.<resource type>.<interaction>` (the resource type of the first entity with a
  reference or a type), DICOM 110114 gives `auth.login` or `auth.logout` (subtypes 110122,
  110123), DICOM 110106 `export`, and otherwise the type's code under `fhir.auditevent.`.
- `status`: outcome 0 success, 4 (minor failure), 8 and 12 failure, but 4 is an attempt in
  what the export wrote (it has the record entity); `outcome_description` outcomeDesc.
- The principal is the requesting agent (else the first): `principal_id` its `who` identifier
  value, else the reference, else the display, else the agent's `name`; `principal_type` the
  agent's type text or first code; the session id and user agent from the export's extensions,
  the IP address from `network`.
- `correlation_id`: the transaction entity of IHE BALP (type `XrequestId` of the
  BasicAuditEntityType code system), its `what.identifier.value`.
- `patient_id`: the entity whose role is Patient (object-role 1), or, with no role and not a
  data entity, whose `what` is a Patient: its identifier value, else the id of its reference.
- The target: the data entity (role 4, Domain Resource, or type 2, System Object), else the
  first other entity: `target_resource_type` its display or the reference's type,
  `target_resource_id` its identifier value or reference. A target that refers to a Patient is
  the patient too when no entity names one.
- `purpose_of_use` the first purposeOfEvent code other than BTG; `break_glass` when BTG is there.
- The export's record entity (system `urn:audit-ingest:event`) gives back `details`,
  `priority` and `data_classification` (and `correlation_id`, in exports written before it
  became the request id entity); its hash, signature and key ids are the
  exporting service's and are left out (this service hashes and signs what it stores). Without
  it, an event about a patient is `PHI`, others `INTERNAL`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from app.events.json_bounds import check_depth
from app.fhir.codes import (
    ACT_REASON,
    ACTION_SYSTEM,
    BALP_ENTITY_TYPE,
    DCM,
    ENTITY_TYPE,
    EVENT_SYSTEM,
    EVENT_TYPE,
    OBJECT_ROLE,
    PATIENT_SYSTEM,
    REQUEST_ID,
    RESTFUL,
    SESSION_EXTENSION,
    USER_AGENT_EXTENSION,
)

OUTCOME_STATUS = {"0": "success", "4": "failure", "8": "failure", "12": "failure"}
FHIR_IDS = uuid.UUID("0b7d9e4c-1f2a-4c3b-8d5e-6f7a8b9c0d1e")  # ids of events sent without a UUID
LOGIN, LOGOUT = "110122", "110123"
# The code system's canonical URL is https; some servers write it with http.
BALP_ENTITY_TYPES = frozenset({BALP_ENTITY_TYPE, BALP_ENTITY_TYPE.replace("https:", "http:", 1)})
PATIENT_ROLE, DOMAIN_RESOURCE_ROLE = "1", "4"  # object-role
SYSTEM_OBJECT = "2"  # audit-entity-type
RESTFUL_VERBS = {"search-type": "search", "search-system": "search", "history-instance": "history"}
MAX_RESOURCES = 10_000
EVENT_LEVELS = 2  # what holds an event's details in the bulk body parsed: [{"details": ...}]


class NotAnAuditEvent(ValueError):
    """A resource this intake cannot map; `field` names where (FHIR path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def resources_of(body: Any) -> list[Any]:
    """The AuditEvent resources of a body: itself, or each entry's resource of a Bundle."""
    if not isinstance(body, dict):
        raise NotAnAuditEvent("", "send a FHIR AuditEvent resource or a Bundle of them")
    kind = body.get("resourceType")
    if kind == "AuditEvent":
        return [body]
    if kind != "Bundle":
        raise NotAnAuditEvent("resourceType", "resourceType must be AuditEvent or Bundle")
    entries = body.get("entry", [])
    if not isinstance(entries, list):
        raise NotAnAuditEvent("entry", "a Bundle's entry must be an array")
    if len(entries) > MAX_RESOURCES:
        raise NotAnAuditEvent("entry", f"at most {MAX_RESOURCES} entries per Bundle")
    return [entry.get("resource") if isinstance(entry, dict) else None for entry in entries]


def _codings(value: Any) -> list[Mapping[str, Any]]:
    """The codings of a Coding, a CodeableConcept, or a list of either."""
    items = value if isinstance(value, list) else [value]
    found: list[Mapping[str, Any]] = []
    for item in items:
        if isinstance(item, dict):
            found += [c for c in item.get("coding", []) if isinstance(c, dict)]
            if "code" in item:
                found.append(item)
    return found


def _code(value: Any, system: str) -> str | None:
    for coding in _codings(value):
        if coding.get("system") == system and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def _reference_parts(what: Any) -> tuple[str | None, str | None]:
    """(resource type, full reference) of a Reference's `reference`, e.g. Patient/123."""
    if not isinstance(what, dict) or not isinstance(what.get("reference"), str):
        return None, None
    reference: str = what["reference"]
    kind = reference.split("/", 1)[0] if "/" in reference else None
    return kind, reference


def _identifier(what: Any) -> str | None:
    if isinstance(what, dict) and isinstance(what.get("identifier"), dict):
        value = what["identifier"].get("value")
        return value if isinstance(value, str) else None
    return None


def _principal(agents: Any) -> Mapping[str, Any]:
    if not isinstance(agents, list) or not agents or not all(isinstance(a, dict) for a in agents):
        raise NotAnAuditEvent("agent", "an AuditEvent needs at least one agent")
    requestors = [a for a in agents if a.get("requestor") is True]
    agent: Mapping[str, Any] = requestors[0] if requestors else agents[0]
    return agent


def _agent_fields(agent: Mapping[str, Any]) -> dict[str, Any]:
    who = agent.get("who")
    _, reference = _reference_parts(who)
    display = who.get("display") if isinstance(who, dict) else None
    principal = _identifier(who) or reference or display or agent.get("name")
    if not isinstance(principal, str) or not principal:
        raise NotAnAuditEvent("agent.who", "the requesting agent names no one (who or name)")
    fields: dict[str, Any] = {"principal_id": principal}
    kind = agent.get("type")
    if isinstance(kind, dict):
        text = kind.get("text") or next((c.get("code") for c in _codings(kind)), None)
        if isinstance(text, str):
            fields["principal_type"] = text
    session = _session(agent)
    if session:
        fields["session_context"] = session
    return fields


def _session(agent: Mapping[str, Any]) -> dict[str, Any]:
    """The session id and user agent (the export's extensions) and the IP address."""
    session: dict[str, Any] = {}
    names = {SESSION_EXTENSION: "session_id", USER_AGENT_EXTENSION: "user_agent"}
    for extension in agent.get("extension", []) or []:
        if isinstance(extension, dict) and isinstance(extension.get("valueString"), str):
            name = names.get(extension.get("url", ""))
            if name:
                session[name] = extension["valueString"]
    network = agent.get("network")
    if isinstance(network, dict) and isinstance(network.get("address"), str):
        if network.get("type") in (None, "2"):  # 2: an IP address
            session["ip_address"] = network["address"]
    return session


def _refers_to_patient(entity: Mapping[str, Any]) -> bool:
    kind, _ = _reference_parts(entity.get("what"))
    what = entity.get("what")
    return (
        kind == "Patient"
        or (isinstance(what, dict) and what.get("type") == "Patient")
        or (isinstance(what, dict) and what.get("identifier", {}).get("system") == PATIENT_SYSTEM)
    )


def _is_data(entity: Mapping[str, Any]) -> bool:
    """The resource acted on (BALP's data entity), whatever its type, a Patient included."""
    return (
        _code(entity.get("role"), OBJECT_ROLE) == DOMAIN_RESOURCE_ROLE
        or _code(entity.get("type"), ENTITY_TYPE) == SYSTEM_OBJECT
    )


def _is_patient(entity: Mapping[str, Any]) -> bool:
    role = _code(entity.get("role"), OBJECT_ROLE)
    if role is not None:
        return role == PATIENT_ROLE
    return not _is_data(entity) and _refers_to_patient(entity)


def _is_request_id(entity: Mapping[str, Any]) -> bool:
    """BALP's transaction entity: the X-Request-Id of the request audited."""
    return any(
        coding.get("code") == REQUEST_ID
        and coding.get("system", BALP_ENTITY_TYPE) in BALP_ENTITY_TYPES
        for coding in _codings(entity.get("type"))
    )


def _reference_id(reference: str) -> str:
    """The id of a reference: `Patient/p-1` and `Patient/p-1/_history/2` give `p-1`."""
    return reference.split("/_history/", 1)[0].rsplit("/", 1)[-1]


def _is_record(entity: Mapping[str, Any]) -> bool:
    what = entity.get("what")
    return isinstance(what, dict) and what.get("identifier", {}).get("system") == EVENT_SYSTEM


def _record_fields(entity: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for detail in entity.get("detail", []) or []:
        if not isinstance(detail, dict) or not isinstance(detail.get("valueString"), str):
            continue
        name, value = detail.get("type"), detail["valueString"]
        if name in ("correlation_id", "priority", "data_classification"):
            fields[name] = value
        elif name == "details":
            check_depth(value.encode(), EVENT_LEVELS, "details (entity.detail), in its event,")
            try:
                fields["details"] = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise NotAnAuditEvent("entity.detail", "details is not JSON") from exc
    return fields


def _entity_fields(entities: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    others: list[Mapping[str, Any]] = []  # the target is among these
    for entity in entities if isinstance(entities, list) else []:
        if not isinstance(entity, dict):
            continue
        what = entity.get("what")
        _, reference = _reference_parts(what)
        if _is_record(entity):
            fields.update(_record_fields(entity))
            fields["exported"] = True
        elif _is_request_id(entity):
            request_id = _identifier(what)
            if request_id and "correlation_id" not in fields:
                fields["correlation_id"] = request_id
        elif _is_patient(entity):
            patient = _identifier(what) or (_reference_id(reference) if reference else None)
            if patient and "patient_id" not in fields:
                fields["patient_id"] = patient
        elif isinstance(what, dict):
            others.append(entity)
    target = next((e for e in others if _is_data(e)), others[0] if others else None)
    for name, value in _target_fields(target).items() if target is not None else ():
        fields.setdefault(name, value)  # a patient entity's patient_id comes first
    return fields


def _target_fields(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The target's fields, and its patient when it refers to a Patient (a data entity that
    is the patient's own record)."""
    what = entity["what"]
    kind, reference = _reference_parts(what)
    fields: dict[str, Any] = {}
    if reference and _refers_to_patient(entity):
        fields["patient_id"] = _reference_id(reference)
    display = what.get("display")
    target_type = kind or (display if display != "resource" else None)
    if isinstance(target_type, str):
        fields["target_resource_type"] = target_type
    target_id = _identifier(what) or reference
    if target_id:
        fields["target_resource_id"] = target_id
    return fields


def _action(resource: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    own = _code(resource.get("subtype"), ACTION_SYSTEM)
    if own:
        return own
    kind = resource.get("type")
    if _code(kind, EVENT_TYPE) == "rest":
        interaction = _code(resource.get("subtype"), RESTFUL)
        target = str(fields.get("target_resource_type") or "resource").lower()
        verb = RESTFUL_VERBS.get(interaction or "", interaction or "operation")
        return f"fhir.{target}.{verb}"
    dicom = _code(kind, DCM)
    if dicom == "110114":
        return "auth.logout" if _code(resource.get("subtype"), DCM) == LOGOUT else "auth.login"
    if dicom == "110106":
        return "export"
    code = next((c.get("code") for c in _codings(kind)), None)
    if not isinstance(code, str) or not code:
        raise NotAnAuditEvent("type", "an AuditEvent needs a type")
    return f"fhir.auditevent.{code.lower()}"


def _purposes(resource: Mapping[str, Any]) -> dict[str, Any]:
    codes = [
        c.get("code")
        for c in _codings(resource.get("purposeOfEvent", []))
        if c.get("system") == ACT_REASON
    ]
    fields: dict[str, Any] = {}
    purpose = next((c for c in codes if c != "BTG"), None)
    if isinstance(purpose, str):
        fields["purpose_of_use"] = purpose
    if "BTG" in codes:
        fields["break_glass"] = True
    return fields


def event_of(resource: Any) -> dict[str, Any]:
    """The v1 event of one AuditEvent resource (validated afterwards like any event); a value of
    an unexpected JSON type anywhere is a NotAnAuditEvent, never another error."""
    try:
        return _event_of(resource)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        if isinstance(exc, NotAnAuditEvent):
            raise
        raise NotAnAuditEvent("", "a field holds a value of the wrong JSON type") from exc


def _event_of(resource: Any) -> dict[str, Any]:
    if not isinstance(resource, dict) or resource.get("resourceType") != "AuditEvent":
        raise NotAnAuditEvent("resourceType", "each resource must be an AuditEvent")
    outcome = resource.get("outcome", "0")
    if not isinstance(outcome, str) or outcome not in OUTCOME_STATUS:
        raise NotAnAuditEvent("outcome", "outcome must be 0, 4, 8 or 12")
    fields: dict[str, Any] = _entity_fields(resource.get("entity"))
    exported = fields.pop("exported", False)
    status = OUTCOME_STATUS[outcome]
    if outcome == "4" and exported:  # the export writes an attempt as 4
        status = "attempt"
    event: dict[str, Any] = {
        "action": _action(resource, fields),
        "status": status,
        **_agent_fields(_principal(resource.get("agent"))),
        **fields,
        **_purposes(resource),
    }
    if "recorded" in resource:
        event["timestamp"] = resource["recorded"]
    if isinstance(resource.get("outcomeDesc"), str):
        event["outcome_description"] = resource["outcomeDesc"]
    ident = resource.get("id")
    if isinstance(ident, str):
        try:
            event["event_id"] = str(uuid.UUID(ident))
        except ValueError:  # a server's own id: the same resource sent again is the same event
            event["event_id"] = str(uuid.uuid5(FHIR_IDS, ident))
    if "data_classification" not in event:
        event["data_classification"] = "PHI" if event.get("patient_id") else "INTERNAL"
    return event
