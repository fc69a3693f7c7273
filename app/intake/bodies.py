"""JSON bodies into validated events in bounded memory and time, whatever arrives.

Valid bodies take one validating parse (the quick path). What could make that parse or its
errors large is checked first, from the raw bytes: a body over SMALL_BODY (1 MiB; SMALL_EVENT
for a single event) must hold at most `max_json_values` JSON values (counted at C speed, 413
above), and its events, parsed once, are counted and their fields counted before any is
validated. An invalid body is then validated event by event, listing at most MAX_LISTED
problems and counting the rest (app.intake.problems), so a 10 MiB body of invalid events costs
a bounded answer, not one error object per problem (which for a body of empty objects,
`[{},{},...]`, would be many times its size).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from app.core.config import Settings
from app.core.errors import InvalidEvents, MalformedJson, PayloadTooLarge
from app.events.json_bounds import check_depth, json_values
from app.events.model import CLIENT, EventIn
from app.intake.problems import MAX_LISTED, Problems, shape_problem

# A bulk body up to this size goes straight to the validating parse: an invalid one may make
# one error per field of its first bad event (at most ~120,000: ~70 MB and ~0.2 s, freed when
# answered; a process parses one body at a time). A larger one is checked first (which costs
# more than its parse, so the line is not lower), and holds one of few large-body slots while it
# is read and parsed.
SMALL_BODY = 1 << 20

SMALL_EVENT = 64 * 1024  # likewise a single event


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


@functools.lru_cache(maxsize=8)
def _bulk_adapter(max_events: int) -> TypeAdapter[list[EventIn]]:
    # fail_fast: an invalid body costs the errors of its first bad event here, at most; the
    # problems are then listed one event at a time (Problems).
    return TypeAdapter(Annotated[list[EventIn], Field(max_length=max_events, fail_fast=True)])


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
        shape = shape_problem(parsed_json(body, limits))
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
    """No event time more than `max_skew_s` ahead of now (each one that is, named)."""
    times = [(index, e.timestamp) for index, e in enumerate(events) if e.timestamp is not None]
    if not times:  # the common case of a single event: the service stamps it
        return
    latest = datetime.now(UTC) + timedelta(seconds=max_skew_s)
    ahead = [index for index, moment in times if moment > latest]
    if ahead:
        problems = Problems(bulk=bulk)
        message = f"timestamp is more than {max_skew_s} s in the future"
        for index in ahead:
            problems.add(
                index, [{"field": "timestamp", "type": "timestamp_in_future", "message": message}]
            )
        problems.raise_all()
