"""GET /events (keyset pages, newest first), GET /events/{event_id} and the export of a whole
selection, scoped to the caller (app.read.events)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.api.errors import error_responses
from app.http.auth import ReaderDep
from app.http.deps import EventReadsDep
from app.http.event_data import EventDataRoute
from app.http.exports import export_answer
from app.read.exports import MEDIA_TYPES
from app.read.models import EventFilters, EventOut, EventPage, ExportFilters

router = APIRouter(tags=["events"], route_class=EventDataRoute)

ERRORS = error_responses(400, 401, 403, 404, 422, 429, 503)


@router.get("/events", response_model=EventPage, responses=ERRORS, summary="Search events")
async def list_events(
    reader: ReaderDep, reads: EventReadsDep, filters: Annotated[EventFilters, Query()]
) -> EventPage:
    return await reads.search(reader, filters)


@router.get(
    "/events/export",
    response_class=StreamingResponse,
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **ERRORS},
    summary="Export every matching event (NDJSON, CSV or a FHIR R4 AuditEvent Bundle), streamed",
)
async def export_events(
    reader: ReaderDep, reads: EventReadsDep, filters: Annotated[ExportFilters, Query()]
) -> StreamingResponse:
    return export_answer(await reads.export(reader, filters))


@router.get("/events/{event_id}", response_model=EventOut, responses=ERRORS, summary="One event")
async def get_event(reader: ReaderDep, reads: EventReadsDep, event_id: uuid.UUID) -> EventOut:
    return await reads.event(reader, event_id)
