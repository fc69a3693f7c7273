"""POST /fhir/AuditEvent: standard intake of FHIR R4 AuditEvent resources (one, or a Bundle),
mapped to events (app.fhir.intake) and then handled as POST /events/bulk handles its own:
the same key scope, limits, validation, admission and sealing (app.intake.service)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.errors import error_responses
from app.api.ingest_answers import FHIR_JSON, fhir_answer, request_body
from app.api.schemas import BulkAccepted
from app.http.auth import IngestorDep
from app.http.deps import IngestDep

router = APIRouter(tags=["ingest"])


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
async def post_audit_events(request: Request, caller: IngestorDep, ingest: IngestDep) -> Response:
    """Each AuditEvent becomes one event, mapped as docs/api.md describes; the answer is the
    same as POST /events/bulk's, in the order of the resources."""
    return await fhir_answer(ingest, request, caller)
