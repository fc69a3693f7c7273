"""What is wrong with a body of events, said without the values sent (they may be PHI) and in
bounded space: the first MAX_LISTED problems are listed, the rest counted, and an event with
many unknown fields or that is no object at all is one problem, not one per field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pydantic import ValidationError
from pydantic_core import to_json

from app.core.errors import InvalidEvents, PayloadTooLarge
from app.events.model import EventIn, SessionContext

MAX_LISTED = 100  # problems listed in a 422; the rest are counted

MAX_FIELDS = 64  # an event with more fields than this is one problem, not one per field

EVENT_FIELD_NAMES = frozenset(EventIn.model_fields)

EVENT_FIELDS = len(EVENT_FIELD_NAMES)

SESSION_FIELDS = len(SessionContext.model_fields)


def describe_validation_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic errors as `{index?, field, type, message}`; input values are left out (PHI)."""
    described = []
    for err in errors:
        loc = list(err.get("loc", ()))
        item: dict[str, Any] = {}
        if loc and isinstance(loc[0], int):
            item["index"] = loc.pop(0)
        if loc and loc[0] in {"body", "query", "path", "header"}:
            item["in"] = loc.pop(0)
        item["field"] = ".".join(str(part) for part in loc) or None
        item["type"] = err.get("type")
        item["message"] = err.get("msg")
        described.append(item)
    return described


@dataclass(slots=True)
class Problems:
    """What is wrong with a body: the first MAX_LISTED problems, and how many in all."""

    bulk: bool
    listed: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    events: set[int] = field(default_factory=set)

    def add(self, index: int, problems: list[dict[str, Any]], count: int | None = None) -> None:
        room = MAX_LISTED - len(self.listed)
        for problem in problems[: max(room, 0)]:
            self.listed.append({"index": index, **problem} if self.bulk else problem)
        self.total += len(problems) if count is None else count
        self.events.add(index)

    def add_event(self, index: int, item: Any, context: Mapping[str, Any]) -> None:
        """The problems of one event as sent (a parsed JSON value). Unknown fields are found
        here, each one problem, and the event is validated without them: the validator then
        makes a few errors at most, however many unknown fields an event has."""
        shape = shape_problem(item)
        if shape is not None:
            self.add(index, [shape])
            return
        unknown = [name for name in item if name not in EVENT_FIELD_NAMES]
        known = {k: v for k, v in item.items() if k in EVENT_FIELD_NAMES} if unknown else item
        problems: list[dict[str, Any]] = []
        count = len(unknown)
        try:
            EventIn.model_validate_json(to_json(known), strict=True, context=context)
        except ValidationError as exc:
            count += exc.error_count()
            if len(self.listed) < MAX_LISTED:
                problems = _described(exc)
        if count:
            problems += [_unknown_field(name) for name in unknown[:MAX_LISTED]]
            self.add(index, problems if len(self.listed) < MAX_LISTED else [], count)

    def raise_all(self) -> NoReturn:
        summary = f"{_count(self.total, 'problem')} in {_count(len(self.events), 'event')}"
        if self.total > len(self.listed):
            summary += f"; the first {len(self.listed)} are listed"
        message = f"events are invalid; nothing was accepted: {summary}"
        if any(p["type"] == "details_too_large" for p in self.listed):
            raise PayloadTooLarge("an event's details is over the size limit", details=self.listed)
        raise InvalidEvents(message, details=self.listed)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _unknown_field(name: str) -> dict[str, Any]:
    return {"field": name, "type": "extra_forbidden", "message": "Extra inputs are not permitted"}


def _described(exc: ValidationError) -> list[dict[str, Any]]:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    return describe_validation_errors(errors)


def shape_problem(item: Any) -> dict[str, Any] | None:
    """An event that is not an object, or has far more fields than an event can have, is one
    problem (not one per unknown field)."""
    if not isinstance(item, dict):
        return {"field": None, "type": "model_type", "message": "an event is a JSON object"}
    if len(item) > MAX_FIELDS:
        message = f"{len(item):,} fields; an event has at most {EVENT_FIELDS}"
        return {"field": None, "type": "too_many_fields", "message": message}
    session = item.get("session_context")
    if isinstance(session, dict) and len(session) > MAX_FIELDS:
        message = f"{len(session):,} fields; session_context has at most {SESSION_FIELDS}"
        return {"field": "session_context", "type": "too_many_fields", "message": message}
    return None
