"""GET /events (keyset pages, newest first) and GET /events/{event_id}, scoped to the caller."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from app import repository
from app.access_log import record_access
from app.auth import Caller, require_scope
from app.errors import InvalidCursor, NotFound
from app.main_state import resources
from app.pagination import CursorError, decode_cursor, encode_cursor
from app.schemas import ErrorResponse, EventFilters, EventOut, EventPage

router = APIRouter(tags=["events"])
Reader = Annotated[Caller, Depends(require_scope("read"))]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 422)
}


@router.get("/events", response_model=EventPage, responses=ERRORS, summary="Search events")
async def list_events(
    request: Request, caller: Reader, filters: Annotated[EventFilters, Query()]
) -> EventPage:
    try:
        after = decode_cursor(filters.cursor, filters.order) if filters.cursor else None
    except CursorError as exc:
        raise InvalidCursor(str(exc)) from exc
    query = repository.EventQuery(
        organization_id=caller.organization_id,
        after=after,
        **filters.model_dump(exclude={"cursor"}),
    )
    async with resources(request).engine.connect() as conn:
        rows, more = await repository.query_events(conn, query)
    items = [EventOut.model_validate(repository.event_row_to_dict(row)) for row in rows]
    await record_access(request, caller, "query", filters.model_dump(), len(items))
    last = rows[-1] if more else None
    next_cursor = encode_cursor(last.timestamp, last.event_id, filters.order) if last else None
    return EventPage(items=items, next_cursor=next_cursor)


@router.get("/events/{event_id}", response_model=EventOut, responses=ERRORS, summary="One event")
async def get_event(request: Request, caller: Reader, event_id: uuid.UUID) -> EventOut:
    async with resources(request).engine.connect() as conn:
        row = await repository.get_event(conn, caller.organization_id, event_id)
    await record_access(request, caller, "read", {"event_id": str(event_id)}, int(row is not None))
    if row is None:
        raise NotFound("no such event in your organization")
    return EventOut.model_validate(repository.event_row_to_dict(row))
