"""PHI access reports: who accessed this patient's PHI, and whose PHI this principal accessed.

Both are scoped to the caller's organization, need the `read` scope, and are recorded as
`audit.phi_access` events like every other read of the audit log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api.errors import error_responses
from app.api.pagination import (
    CursorError,
    decode_cursor,
    decode_key_cursor,
    encode_cursor,
    encode_key_cursor,
)
from app.api.read_audit import record_access
from app.api.schemas import EventOut, EventPage
from app.core.caller import Caller
from app.core.errors import InvalidCursor
from app.events.fields import EventTime, Identifier
from app.http.auth import require_scope
from app.http.deps import resources
from app.http.event_data import EventDataRoute
from app.read import queries

router = APIRouter(prefix="/phi-access", tags=["phi access"], route_class=EventDataRoute)

Reader = Annotated[Caller, Depends(require_scope("read"))]

ERRORS = error_responses(400, 401, 403, 422, 503)

Subject = Literal["patient_id", "principal_id"]


class PhiFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: EventTime | None = None
    end: EventTime | None = None
    summary: bool = False
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: Annotated[str, Field(max_length=512)] | None = None


class AccessCount(BaseModel):
    counterpart: str = Field(description="the principal (patient report) or patient (principal)")
    accesses: int
    break_glass_accesses: int
    first_access: datetime
    last_access: datetime


class AccessSummary(BaseModel):
    items: list[AccessCount]
    next_cursor: str | None


async def _report(
    request: Request, caller: Caller, subject: Subject, value: str, filters: PhiFilters
) -> EventPage | AccessSummary:
    query = queries.PhiQuery(
        organization_id=caller.organization_id,
        subject=subject,
        value=value,
        start=filters.start,
        end=filters.end,
        limit=filters.limit,
    )
    try:
        if filters.summary:
            after = decode_key_cursor(filters.cursor) if filters.cursor else None
            result: EventPage | AccessSummary = await _summary(request, query, after)
        else:
            position = decode_cursor(filters.cursor) if filters.cursor else None
            result = await _events(request, query, position)
    except CursorError as exc:
        raise InvalidCursor(str(exc)) from exc
    details = {subject: value, **filters.model_dump(exclude={"cursor"})}
    await record_access(request, caller, "phi_access", details, len(result.items))
    return result


async def _events(request: Request, query: queries.PhiQuery, position: Any) -> EventPage:
    async with resources(request).engine.connect() as conn:
        rows, more = await queries.phi_events(conn, query, position)
    items = [EventOut.model_validate(queries.event_row_to_dict(row)) for row in rows]
    last = rows[-1] if more else None
    return EventPage(
        items=items, next_cursor=encode_cursor(last.timestamp, last.event_id) if last else None
    )


async def _summary(request: Request, query: queries.PhiQuery, after: str | None) -> AccessSummary:
    async with resources(request).engine.connect() as conn:
        rows, more = await queries.phi_counts(conn, query, after)
    items = [AccessCount.model_validate(dict(row._mapping)) for row in rows]
    return AccessSummary(
        items=items, next_cursor=encode_key_cursor(items[-1].counterpart) if more else None
    )


@router.get(
    "/patients/{patient_id}",
    response_model=EventPage | AccessSummary,
    responses=ERRORS,
    summary="Who accessed this patient's PHI",
)
async def patient_report(
    request: Request,
    caller: Reader,
    patient_id: Identifier,
    filters: Annotated[PhiFilters, Query()],
) -> EventPage | AccessSummary:
    """PHI events about the patient, newest first; `summary=true`: one row per principal."""
    return await _report(request, caller, "patient_id", patient_id, filters)


@router.get(
    "/principals/{principal_id}",
    response_model=EventPage | AccessSummary,
    responses=ERRORS,
    summary="Whose PHI this principal accessed",
)
async def principal_report(
    request: Request,
    caller: Reader,
    principal_id: Identifier,
    filters: Annotated[PhiFilters, Query()],
) -> EventPage | AccessSummary:
    """PHI events by the principal, newest first; `summary=true`: one row per patient."""
    return await _report(request, caller, "principal_id", principal_id, filters)
