"""IHE ATNA audit messages into events (v1): the XML of DICOM PS3.15 (`AuditMessage`, codes in
`csd-code`/`codeSystemName`/`originalText`) and of RFC 3881 (the same elements, codes in
`code`/`codeSystemName`/`displayName`), as hospital systems send them over syslog.

What a message gives:
- `action`: the EventID's name (DICOM 110110 Patient Record -> `patient.record`, 110112 Query ->
  `query`, ...) and the EventActionCode's verb (C create, R read, U update, D delete, E
  execute): `patient.record.read`; User Authentication (110114) gives `auth.login` or
  `auth.logout` by its EventTypeCode (110122, 110123); an unknown EventID `dicom.<code>.<verb>`.
- `status`: EventOutcomeIndicator 0 success, 4, 8 and 12 failure; `outcome_description` the
  EventOutcomeDescription, when sent.
- `timestamp`: EventDateTime.
- The principal is the ActiveParticipant with UserIsRequestor true (else the first): `principal_id`
  its UserID, `principal_type` its RoleIDCode's text or code; the IP address its
  NetworkAccessPointID when its type is 2.
- `patient_id`: the ParticipantObjectID of the object of type 1 (Person) and role 1 (Patient);
  the target: the first other object (`target_resource_type` its ParticipantObjectIDTypeCode's
  text or code, `target_resource_id` its ParticipantObjectID).
- `purpose_of_use`: the first PurposeOfUse code other than BTG; `break_glass` when BTG is one.
- `data_classification` PHI with a patient, else INTERNAL; `details` the audit source id and the
  EventID as sent.

The XML is parsed with defusedxml: a document type declaration, an entity declaration or an
external reference is refused, so nothing is expanded or fetched.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden
from defusedxml.ElementTree import fromstring

OUTCOMES = {"0": "success", "4": "failure", "8": "failure", "12": "failure"}
VERBS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}
EVENTS = {  # DICOM PS3.16 CID 400 audit event ids
    "110100": "application.activity",
    "110101": "auditlog.used",
    "110102": "transfer.begin",
    "110103": "instances.accessed",
    "110104": "instances.transferred",
    "110105": "study.deleted",
    "110106": "export",
    "110107": "import",
    "110108": "network.entry",
    "110109": "order.record",
    "110110": "patient.record",
    "110111": "procedure.record",
    "110112": "query",
    "110113": "security.alert",
    "110114": "auth",
}
LOGIN, LOGOUT = "110122", "110123"
MAX_XML_DEPTH = 32


class NotAnAuditMessage(ValueError):
    """An audit message this intake cannot map; `field` names where (element or attribute)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [c for c in element if _local(c.tag) == name]


def _code(element: ElementTree.Element | None) -> tuple[str | None, str | None]:
    """(code, text) of a coded element, in DICOM's or RFC 3881's attributes."""
    if element is None:
        return None, None
    code = element.get("csd-code") or element.get("code")
    text = element.get("originalText") or element.get("displayName")
    return code, text


def _depth(root: ElementTree.Element) -> int:
    """How deep the tree goes (without recursion: a deep message must not exhaust the stack)."""
    deepest, stack = 0, [(root, 0)]
    while stack:
        element, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in element)
    return deepest


def _refusal(exc: DefusedXmlException) -> str:
    if isinstance(exc, DTDForbidden):
        return "document type declarations are not accepted"
    if isinstance(exc, EntitiesForbidden):
        return "entity declarations are not accepted"
    return "external references are not accepted"


def parse_xml(text: str) -> ElementTree.Element:
    try:
        root = fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise NotAnAuditMessage("", _refusal(exc)) from exc
    except ElementTree.ParseError as exc:
        raise NotAnAuditMessage("", f"not well-formed XML: {exc}") from exc
    if _local(root.tag) != "AuditMessage":
        raise NotAnAuditMessage("AuditMessage", "the root element must be AuditMessage")
    if _depth(root) > MAX_XML_DEPTH:
        raise NotAnAuditMessage("AuditMessage", "the message is nested too deeply")
    return root


def _action(identification: ElementTree.Element) -> str:
    event_code, _ = _code(_child(identification, "EventID"))
    if not event_code:
        raise NotAnAuditMessage("EventID", "EventIdentification needs an EventID")
    verb = VERBS.get(identification.get("EventActionCode", "E"), "execute")
    if event_code == "110114":
        kinds = {_code(t)[0] for t in _children(identification, "EventTypeCode")}
        return "auth.logout" if LOGOUT in kinds else "auth.login"
    name = EVENTS.get(event_code, f"dicom.{event_code}")
    return f"{name}.{verb}"


def _principal(root: ElementTree.Element) -> dict[str, Any]:
    participants = _children(root, "ActiveParticipant")
    if not participants:
        raise NotAnAuditMessage("ActiveParticipant", "an audit message needs an ActiveParticipant")
    requestors = [p for p in participants if p.get("UserIsRequestor", "").lower() == "true"]
    who = requestors[0] if requestors else participants[0]
    user = who.get("UserID") or who.get("AlternativeUserID") or who.get("UserName")
    if not user:
        raise NotAnAuditMessage(
            "ActiveParticipant@UserID", "the requesting participant has no UserID"
        )
    fields: dict[str, Any] = {"principal_id": user}
    role_code, role_text = _code(_child(who, "RoleIDCode"))
    if role_text or role_code:
        fields["principal_type"] = role_text or role_code
    address = who.get("NetworkAccessPointID")
    if address and who.get("NetworkAccessPointTypeCode", "2") == "2":
        fields["session_context"] = {"ip_address": address}
    return fields


def _objects(root: ElementTree.Element) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in _children(root, "ParticipantObjectIdentification"):
        ident = item.get("ParticipantObjectID")
        if not ident:
            continue
        is_patient = item.get("ParticipantObjectTypeCode") == "1" and (
            item.get("ParticipantObjectTypeCodeRole") == "1"
        )
        if is_patient and "patient_id" not in fields:
            fields["patient_id"] = ident
        elif not is_patient and "target_resource_id" not in fields:
            code, text = _code(_child(item, "ParticipantObjectIDTypeCode"))
            if text or code:
                fields["target_resource_type"] = text or code
            fields["target_resource_id"] = ident
    return fields


def _purposes(identification: ElementTree.Element) -> dict[str, Any]:
    codes = [_code(p)[0] for p in _children(identification, "PurposeOfUse")]
    fields: dict[str, Any] = {}
    purpose = next((c for c in codes if c and c != "BTG"), None)
    if purpose:
        fields["purpose_of_use"] = purpose
    if "BTG" in codes:
        fields["break_glass"] = True
    return fields


def event_of(root: ElementTree.Element) -> dict[str, Any]:
    """The v1 event of one AuditMessage (validated afterwards like any event)."""
    identification = _child(root, "EventIdentification")
    if identification is None:
        raise NotAnAuditMessage("EventIdentification", "an audit message needs EventIdentification")
    outcome = identification.get("EventOutcomeIndicator", "0")
    if outcome not in OUTCOMES:
        raise NotAnAuditMessage(
            "EventIdentification@EventOutcomeIndicator", "the outcome must be 0, 4, 8 or 12"
        )
    when = identification.get("EventDateTime")
    if not when:
        raise NotAnAuditMessage("EventIdentification@EventDateTime", "the message has no time")
    event_code, event_text = _code(_child(identification, "EventID"))
    event: dict[str, Any] = {
        "action": _action(identification),
        "status": OUTCOMES[outcome],
        "timestamp": when,
        **_principal(root),
        **_objects(root),
        **_purposes(identification),
    }
    description = _child(identification, "EventOutcomeDescription")
    if description is not None and description.text:
        event["outcome_description"] = description.text.strip()
    source = _child(root, "AuditSourceIdentification")
    event["details"] = {
        "atna_event": {"code": event_code, "text": event_text},
        "audit_source": source.get("AuditSourceID") if source is not None else None,
    }
    event["data_classification"] = "PHI" if event.get("patient_id") else "INTERNAL"
    return event
