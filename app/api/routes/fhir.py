"""POST /fhir/AuditEvent: standard intake of FHIR R4 AuditEvent resources (one, or a Bundle),
mapped to events (app.fhir.intake) and then handled as POST /events/bulk handles its own:
the same key scope, limits, validation, admission and sealing."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.api.errors import error_responses
from app.api.routes.ingest import ingest_events, request_body
from app.api.schemas import BulkAccepted
from app.core.caller import Caller
from app.http.auth import require_scope
from app.intake.fhir_bodies import parse_audit_events

router = APIRouter(tags=["ingest"])
Ingestor = Annotated[Caller, Depends(require_scope("ingest"))]
FHIR_JSON = ("application/fhir+json", "application/json")


@router.post(
    "/fhir/AuditEvent",
    status_code=202,
    response_model=BulkAccepted,
    responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503),
    openapi_extra=request_body(
        {
            "type": "object",
            "description": "A FHIR R4 AuditEvent, or a Bundle whose entries are AuditEvents",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string", "enum": ["AuditEvent", "Bundle"]}},
        },
        media_types=FHIR_JSON,
    ),
    summary="Record FHIR R4 AuditEvents (one, or a Bundle of them), all or nothing",
)
async def post_audit_events(request: Request, caller: Ingestor) -> Response:
    """Each AuditEvent becomes one event, mapped as docs/api.md describes; the answer is the
    same as POST /events/bulk's, in the order of the resources."""
    ids = await ingest_events(request, caller, parse_audit_events, FHIR_JSON)
    body = orjson.dumps({"accepted": len(ids), "event_ids": ids})
    return Response(body, 202, media_type="application/json")
