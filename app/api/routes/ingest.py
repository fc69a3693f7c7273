"""POST /events and /events/bulk: validate, queue in the stream, answer 202."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from redis.exceptions import RedisError

from app.api.errors import error_responses
from app.api.schemas import Accepted, BulkAccepted
from app.core.caller import Caller
from app.core.errors import ApiError, PayloadTooLarge, Unavailable, UnsupportedMediaType
from app.core.limits import Slot, Slots, TooManyLargeRequests
from app.core.timefmt import format_timestamp
from app.events.ids import new_event_ids
from app.events.model import EventIn
from app.events.record import EventRecord
from app.http.auth import require_scope
from app.http.deps import resources
from app.intake.bodies import SMALL_BODY, Limits, limits_of, parse_bulk, parse_event
from app.queue.admission import admit_and_queue

router = APIRouter(tags=["ingest"])

Ingestor = Annotated[Caller, Depends(require_scope("ingest"))]

ERRORS = error_responses(400, 401, 403, 413, 415, 422, 429, 503)

EVENT_REF = {"$ref": "#/components/schemas/EventIn"}
JSON = ("application/json",)

COALESCE_BELOW = 500  # smaller requests share Lua calls (app.queue.coalesce); larger ones go alone


def request_body(schema: dict[str, Any], media_types: tuple[str, ...] = JSON) -> dict[str, Any]:
    # The body is read raw (one validating parse); these describe it in the OpenAPI document.
    content = {media: {"schema": schema} for media in media_types}
    return {"requestBody": {"required": True, "content": content}}


def event_component_schemas() -> dict[str, Any]:
    """EventIn and the models it refers to, for the OpenAPI document's components."""
    schema = EventIn.model_json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = schema.pop("$defs", {})
    components["EventIn"] = schema
    return components


async def read_body(
    request: Request, caller: Caller, media_types: tuple[str, ...] = JSON
) -> tuple[bytes, Slot | None]:
    """The body, and for one over SMALL_BODY the slot it holds (held until the answer: a
    process reads and parses few large bodies at once, and a key only its share of them)."""
    content_type = request.headers.get("content-type", media_types[0])
    if content_type.split(";", 1)[0].strip().lower() not in media_types:
        raise UnsupportedMediaType(f"send events as {' or '.join(media_types)}")
    res = resources(request)
    limit = res.settings.max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is over {limit} bytes")
    slot = None
    chunks: list[bytes] = []
    size = 0
    try:
        if declared.isdigit() and int(declared) > SMALL_BODY:
            slot = _large(res.large_bodies, caller)
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over {limit} bytes")
            if slot is None and size > SMALL_BODY:
                slot = _large(res.large_bodies, caller)
            chunks.append(chunk)
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    return b"".join(chunks), slot


def _large(slots: Slots, caller: Caller) -> Slot:
    return slots.acquire(caller.key_id, caller.organization_id, TooManyLargeRequests)


async def accept(request: Request, caller: Caller, events: list[EventIn]) -> list[str]:
    """Queue validated events; all of them or, on any refusal, none."""
    res = resources(request)
    org, key_id = caller.organization_id, caller.key_id
    high = any(event.priority == "high" for event in events)

    async def put() -> list[EventRecord]:
        received_at = format_timestamp(datetime.now(UTC))
        fresh = iter(new_event_ids(sum(1 for event in events if event.event_id is None)))
        records = [
            event.to_record(org, received_at, None if event.event_id else next(fresh), key_id)
            for event in events
        ]
        if len(records) < COALESCE_BELOW:
            await res.enqueuer.enqueue(records)
        else:
            await res.stream.enqueue(records, res.settings.stream_entry_events)
        return records

    try:
        records = await admit_and_queue(
            res.admission, key_id, caller.scopes, org, len(events), put, high=high
        )
    except RedisError as exc:
        raise Unavailable(
            "the queue is unreachable; retry later", headers={"Retry-After": "1"}
        ) from exc
    res.metrics.accepted.inc(len(records))
    return [record["event_id"] for record in records]


async def ingest_events(
    request: Request,
    caller: Caller,
    parse: Callable[[bytes, Limits], list[EventIn]],
    media_types: tuple[str, ...] = JSON,
) -> list[str]:
    """Read, parse and queue one request's events; a large body's slot is held until then."""
    slot = None
    try:
        body, slot = await read_body(request, caller, media_types)
        return await accept(request, caller, parse(body, _limits(request)))
    except ApiError as exc:
        _count_rejection(request, exc)
        raise
    finally:
        if slot is not None:
            slot.release()


def _count_rejection(request: Request, exc: ApiError) -> None:
    resources(request).metrics.rejected.labels(reason=exc.code).inc()


@router.post(
    "/events",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
    openapi_extra=request_body(EVENT_REF),
    summary="Record one audit event",
)
async def post_event(request: Request, caller: Ingestor) -> Response:
    ids = await ingest_events(request, caller, lambda body, limits: [parse_event(body, limits)])
    return Response(orjson.dumps({"event_id": ids[0]}), 202, media_type="application/json")


@router.post(
    "/events/bulk",
    status_code=202,
    response_model=BulkAccepted,
    responses=ERRORS,
    openapi_extra=request_body({"type": "array", "items": EVENT_REF, "minItems": 1}),
    summary="Record a JSON array of audit events, all or nothing",
)
async def post_bulk(request: Request, caller: Ingestor) -> Response:
    ids = await ingest_events(request, caller, parse_bulk)
    body_out = orjson.dumps({"accepted": len(ids), "event_ids": ids})
    return Response(body_out, 202, media_type="application/json")


def _limits(request: Request) -> Limits:
    return limits_of(resources(request).settings)
