"""POST /events and /events/bulk: validate, queue in the stream, answer 202 (app.intake.service;
the fast path, app.api.fastpath, answers them the same way ahead of the framework)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.errors import error_responses
from app.api.ingest_answers import EVENT_REF, bulk_answer, event_answer, request_body
from app.api.schemas import Accepted, BulkAccepted
from app.http.auth import IngestorDep
from app.http.deps import IngestDep

router = APIRouter(tags=["ingest"])

ERRORS = error_responses(400, 401, 403, 413, 415, 422, 429, 503)


@router.post(
    "/events",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
    openapi_extra=request_body(EVENT_REF),
    summary="Record one audit event",
)
async def post_event(request: Request, caller: IngestorDep, ingest: IngestDep) -> Response:
    return await event_answer(ingest, request, caller)


@router.post(
    "/events/bulk",
    status_code=202,
    response_model=BulkAccepted,
    responses=ERRORS,
    openapi_extra=request_body({"type": "array", "items": EVENT_REF, "minItems": 1}),
    summary="Record a JSON array of audit events, all or nothing",
)
async def post_bulk(request: Request, caller: IngestorDep, ingest: IngestDep) -> Response:
    return await bulk_answer(ingest, request, caller)
