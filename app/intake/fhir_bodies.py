"""FHIR bodies into validated events: `POST /fhir/AuditEvent` takes one AuditEvent resource or a
Bundle of them; each is mapped (app.fhir.intake) and then validated as the events of a bulk body
are, within the same bounds."""

from __future__ import annotations

from typing import Any

import orjson

from app.core.errors import InvalidEvents, PayloadTooLarge
from app.events.model import EventIn
from app.fhir.intake import NotAnAuditEvent, event_of, resources_of
from app.intake.bodies import Limits, parse_bulk, parsed_json
from app.intake.problems import Problems


def parse_audit_events(body: bytes, limits: Limits) -> list[EventIn]:
    """The events of a FHIR body (an AuditEvent or a Bundle of them), all valid, or an ApiError
    listing what is wrong (by entry index and FHIR path, then as the event's fields)."""
    try:
        found = resources_of(parsed_json(body, limits))
    except NotAnAuditEvent as exc:
        raise InvalidEvents(str(exc), details=[_problem(exc)]) from exc
    if len(found) > limits.max_events:
        raise PayloadTooLarge(f"at most {limits.max_events} AuditEvents per request")
    problems = Problems(bulk=True)
    events = []
    for index, resource in enumerate(found):
        try:
            events.append(event_of(resource))
        except NotAnAuditEvent as exc:
            problems.add(index, [_problem(exc)])
    if problems.total:
        problems.raise_all()
    return parse_bulk(orjson.dumps(events), limits)


def _problem(exc: NotAnAuditEvent) -> dict[str, Any]:
    return {"field": exc.field, "type": "fhir_audit_event", "message": str(exc)}
