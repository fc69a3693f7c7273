"""GET /events (keyset pages, newest first) and GET /events/{event_id}, scoped to the caller."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import model_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.errors import error_responses
from app.api.pagination import CursorError, decode_cursor, encode_cursor
from app.api.read_audit import record_access
from app.api.schemas import EventFilters, EventOut, EventPage, EventSelection
from app.core.caller import Caller
from app.core.errors import InvalidCursor, NotFound
from app.core.limits import TooManyExports
from app.fhir import export as fhir
from app.http.auth import require_scope
from app.http.deps import resources
from app.http.event_data import EventDataRoute
from app.http.guarded_stream import Ending, GuardedStream
from app.read import exports, queries

router = APIRouter(tags=["events"], route_class=EventDataRoute)

Reader = Annotated[Caller, Depends(require_scope("read"))]

ERRORS = error_responses(400, 401, 403, 404, 422, 429, 503)


@router.get("/events", response_model=EventPage, responses=ERRORS, summary="Search events")
async def list_events(
    request: Request, caller: Reader, filters: Annotated[EventFilters, Query()]
) -> EventPage:
    try:
        after = decode_cursor(filters.cursor, filters.order) if filters.cursor else None
    except CursorError as exc:
        raise InvalidCursor(str(exc)) from exc
    query = queries.EventQuery(
        organization_id=caller.organization_id,
        after=after,
        **filters.model_dump(exclude={"cursor"}),
    )
    async with resources(request).engine.connect() as conn:
        rows, more = await queries.query_events(conn, query)
    items = [EventOut.model_validate(queries.event_row_to_dict(row)) for row in rows]
    await record_access(request, caller, "query", filters.model_dump(), len(items))
    last = rows[-1] if more else None
    next_cursor = encode_cursor(last.timestamp, last.event_id, filters.order) if last else None
    return EventPage(items=items, next_cursor=next_cursor)


MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv", "fhir": "application/fhir+json"}

EXTENSIONS = {"ndjson": "ndjson", "csv": "csv", "fhir": "json"}


class ExportFilters(EventSelection):
    format: Literal["ndjson", "csv", "fhir"] = "ndjson"

    @model_validator(mode="before")
    @classmethod
    def _whole_result(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.keys() & {"cursor", "limit"}:
            raise ValueError("an export streams every matching event: no cursor or limit")
        return data


@router.get(
    "/events/export",
    response_class=StreamingResponse,
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **ERRORS},
    summary="Export every matching event (NDJSON, CSV or a FHIR R4 AuditEvent Bundle), streamed",
)
async def export_events(
    request: Request, caller: Reader, filters: Annotated[ExportFilters, Query()]
) -> StreamingResponse:
    res = resources(request)
    query = queries.EventQuery(
        organization_id=caller.organization_id, **filters.model_dump(exclude={"format"})
    )
    asked = filters.model_dump()
    slot = res.exports.acquire(caller.key_id, caller.organization_id, TooManyExports)
    try:
        await record_access(request, caller, "export", {**asked, "phase": "start"}, 0)
    except BaseException:
        slot.release()
        raise
    sent = [0]

    async def record_end(ending: Ending) -> None:
        """What the export sent, however it ended (an early end says how)."""
        end = {"phase": "complete"} if ending == "complete" else {"phase": "ended_early"}
        if ending != "complete":
            end["ended"] = ending
        await record_access(request, caller, "export", {**asked, **end}, sent[0])

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"audit-events-{stamp}.{EXTENSIONS[filters.format]}"
    return GuardedStream(
        _export_body(res.long_reads, query, filters.format, sent),
        slot=slot,
        send_timeout_s=res.settings.export_send_timeout_s,
        media_type=MEDIA_TYPES[filters.format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
        on_end=record_end,
    )


async def _export_body(
    engine: AsyncEngine, query: queries.EventQuery, fmt: str, sent: list[int]
) -> AsyncIterator[bytes]:
    """The export's bytes, in pieces of about SEND_PIECE (a CSV row or a FHIR entry alone
    would be a send each); `sent[0]` counts the rows of the pieces the server has taken (a
    piece is taken when the next one is asked for: its send returned)."""
    made = [0]  # rows in the chunks made so far, the one being sent included
    if fmt == "fhir":
        chunks = fhir.bundle(exports.export_rows(engine, query, made))
    elif fmt == "csv":
        chunks = _csv(exports.export_rows(engine, query, made))
    else:
        chunks = exports.ndjson_pages(engine, query, made)
    piece: list[bytes] = []
    size = 0
    async for chunk in chunks:
        piece.append(chunk)
        size += len(chunk)
        if size >= exports.SEND_PIECE:
            rows = made[0]
            yield b"".join(piece)
            sent[0] = rows
            piece, size = [], 0
    if piece:
        rows = made[0]
        yield b"".join(piece)
        sent[0] = rows


async def _csv(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    yield exports.csv_header()
    async for event in events:
        yield exports.csv_row(event)


@router.get("/events/{event_id}", response_model=EventOut, responses=ERRORS, summary="One event")
async def get_event(request: Request, caller: Reader, event_id: uuid.UUID) -> EventOut:
    async with resources(request).engine.connect() as conn:
        row = await queries.get_event(conn, caller.organization_id, event_id)
    await record_access(request, caller, "read", {"event_id": str(event_id)}, int(row is not None))
    if row is None:
        raise NotFound("no such event in your organization")
    return EventOut.model_validate(queries.event_row_to_dict(row))
