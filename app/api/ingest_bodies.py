"""Ingest bodies into validated events in bounded memory and time, whatever arrives.

Valid bodies take one validating parse (the quick path). What could make that parse or its
errors large is checked first, from the raw bytes: a body over SMALL_BODY (1 MiB; SMALL_EVENT
for a single event) must hold at most `max_json_values` JSON values (counted at C speed, 413
above), and its events, parsed once, are counted and their fields counted before any is
validated. An
invalid body is then validated event by event, listing at most MAX_LISTED problems and counting
the rest, so a 10 MiB body of invalid events costs a bounded answer, not one error object per
problem (which for a body of empty objects, `[{},{},...]`, would be many times its size).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import from_json, to_json

from app.api.errors import describe_validation_errors
from app.core.config import Settings
from app.core.errors import InvalidEvents, MalformedJson, NestedTooDeep, PayloadTooLarge
from app.events.model import CLIENT, EventIn, SessionContext

# A bulk body up to this size goes straight to the validating parse: an invalid one may make
# one error per field of its first bad event (at most ~120,000: ~70 MB and ~0.2 s, freed when
# answered; a process parses one body at a time). A larger one is checked first (which costs
# more than its parse, so the line is not lower), and holds one of few large-body slots while it
# is read and parsed.
SMALL_BODY = 1 << 20

SMALL_EVENT = 64 * 1024  # likewise a single event

MAX_LISTED = 100  # problems listed in a 422; the rest are counted

MAX_FIELDS = 64  # an event with more fields than this is one problem, not one per field

EVENT_FIELD_NAMES = frozenset(EventIn.model_fields)

EVENT_FIELDS = len(EVENT_FIELD_NAMES)

SESSION_FIELDS = len(SessionContext.model_fields)

# A JSON string, or one left open to the end of the text (with a lone backslash last, even):
# every match attempt from a quote succeeds and nothing is ever rescanned (possessive), so
# blanking the strings of any text is one pass. A pattern that failed on a string left open
# was retried from every quote after it: quadratic, seconds for 32 KiB of escaped quotes.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)

# The JSON parser (pydantic_core's) refuses to nest arrays and objects deeper than this; a body
# that does is told so plainly, and JSON carried inside a string (a FHIR AuditEvent's details)
# is held to the same limit, so it can be re-encoded and parsed as an event's.
MAX_JSON_DEPTH = 200

_OPENING = frozenset(b"[{")

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True, slots=True)
class Limits:
    max_events: int
    max_values: int
    max_future_skew_s: int
    context: Mapping[str, Any]


def limits_of(settings: Settings, max_events: int | None = None) -> Limits:
    """The bounds of a client's events under `settings` (at most `max_events` a request)."""
    return Limits(
        max_events=settings.max_events_per_request if max_events is None else max_events,
        max_values=settings.max_json_values,
        max_future_skew_s=settings.max_future_skew_s,
        context={"max_details_bytes": settings.max_details_bytes, CLIENT: True},
    )


def json_values(body: bytes, limit: int) -> int:
    """An upper bound of the JSON values in `body`: one more than its commas and opening
    brackets, counted again with strings blanked out once the first count passes `limit` (a
    comma inside a string is no value)."""
    rough = body.count(b",") + body.count(b"{") + body.count(b"[") + 1
    if rough <= limit:
        return rough
    bare = _STRING.sub(b'""', body)
    return bare.count(b",") + bare.count(b"{") + bare.count(b"[") + 1


def json_depth(text: bytes) -> int:
    """How deeply JSON text nests arrays and objects (brackets in strings do not count),
    measured without recursion."""
    depth = deepest = 0
    for byte in _STRING.sub(b'""', text).translate(None, _NOT_BRACKETS):
        if byte in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def check_depth(text: bytes, around: int = 0, what: str = "the body") -> None:
    """NestedTooDeep when JSON text, within `around` levels of the body that will carry it,
    nests deeper than MAX_JSON_DEPTH. Text with fewer brackets than that is not measured."""
    if text.count(b"[") + text.count(b"{") + around <= MAX_JSON_DEPTH:
        return
    if json_depth(text) + around > MAX_JSON_DEPTH:
        raise NestedTooDeep(
            f"{what} nests JSON more than {MAX_JSON_DEPTH} levels deep",
            details={"max_depth": MAX_JSON_DEPTH},
        )


@functools.lru_cache(maxsize=8)
def _bulk_adapter(max_events: int) -> TypeAdapter[list[EventIn]]:
    # fail_fast: an invalid body costs the errors of its first bad event here, at most; the
    # problems are then listed one event at a time (Problems).
    return TypeAdapter(Annotated[list[EventIn], Field(max_length=max_events, fail_fast=True)])


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
        shape = _shape_problem(item)
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


def _shape_problem(item: Any) -> dict[str, Any] | None:
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


def parsed_json(body: bytes, limits: Limits) -> Any:
    """The body as plain JSON values, after its values were counted (413 when too many)."""
    values = json_values(body, limits.max_values)
    if values > limits.max_values:
        raise PayloadTooLarge(
            f"the body holds {values:,} JSON values; the limit is {limits.max_values:,}"
        )
    try:
        return from_json(body)
    except ValueError as exc:
        check_depth(body)
        raise MalformedJson("request body is not valid JSON") from exc


def _bulk_problems(items: Any, limits: Limits) -> Problems:
    """Every problem of a bulk body, counted; none when it would validate."""
    problems = Problems(bulk=True)
    if not isinstance(items, list):
        problems.total, problems.listed = 1, [_not_a_list()]
        return problems
    if len(items) > limits.max_events:
        raise PayloadTooLarge(f"{len(items):,} events; the limit is {limits.max_events:,}")
    for index, item in enumerate(items):
        problems.add_event(index, item, limits.context)
    return problems


def _not_a_list() -> dict[str, Any]:
    return {"field": None, "type": "list_type", "message": "send a JSON array of events"}


def _quick_failure(exc: ValidationError, body: bytes) -> None:
    """A body that is not JSON at all, or nests deeper than the parser goes, answers 400 at
    once."""
    if exc.error_count() <= MAX_LISTED:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            check_depth(body)
            raise MalformedJson("request body is not valid JSON") from exc


def parse_bulk(body: bytes, limits: Limits) -> list[EventIn]:
    """The events of a bulk body, all valid, or an ApiError listing what is wrong."""
    if len(body) > SMALL_BODY:
        problems = _bulk_problems(parsed_json(body, limits), limits)
        if problems.total:
            problems.raise_all()
    try:
        events = _bulk_adapter(limits.max_events).validate_json(
            body, strict=True, context=limits.context
        )
    except ValidationError as exc:
        _quick_failure(exc, body)
        problems = _bulk_problems(parsed_json(body, limits), limits)
        if problems.total:
            problems.raise_all()
        raise InvalidEvents("events are invalid; nothing was accepted") from exc
    if not events:
        raise InvalidEvents("send at least one event")
    check_times(events, limits.max_future_skew_s, bulk=True)
    return events


def parse_event(body: bytes, limits: Limits) -> EventIn:
    """The one event of a body, valid, or an ApiError saying what is wrong."""
    if len(body) > SMALL_EVENT:
        shape = _shape_problem(parsed_json(body, limits))
        if shape is not None:
            raise InvalidEvents("the event is invalid; nothing was accepted", details=[shape])
    try:
        event = EventIn.model_validate_json(body, strict=True, context=limits.context)
    except ValidationError as exc:
        _quick_failure(exc, body)
        problems = Problems(bulk=False)
        problems.add_event(0, parsed_json(body, limits), limits.context)
        problems.raise_all()
    check_times([event], limits.max_future_skew_s, bulk=False)
    return event


def check_times(events: list[EventIn], max_skew_s: int, bulk: bool) -> None:
    latest = datetime.now(UTC) + timedelta(seconds=max_skew_s)
    problems = Problems(bulk=bulk)
    for index, event in enumerate(events):
        if event.timestamp is not None and event.timestamp > latest:
            message = f"timestamp is more than {max_skew_s} s in the future"
            problems.add(
                index, [{"field": "timestamp", "type": "timestamp_in_future", "message": message}]
            )
    if problems.total:
        problems.raise_all()
