"""PHI access reports: who accessed this patient's PHI, and whose PHI this principal accessed
(app.read.reports). Both are scoped to the caller's organization, need the `read` scope, and are
recorded as `audit.phi_access` events like every other read of the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.errors import error_responses
from app.events.fields import Identifier
from app.http.auth import ReaderDep
from app.http.deps import PhiReportsDep
from app.http.event_data import EventDataRoute
from app.read.models import AccessSummary, EventPage, PhiFilters

router = APIRouter(prefix="/phi-access", tags=["phi access"], route_class=EventDataRoute)

ERRORS = error_responses(400, 401, 403, 422, 503)


@router.get(
    "/patients/{patient_id}",
    response_model=EventPage | AccessSummary,
    responses=ERRORS,
    summary="Who accessed this patient's PHI",
)
async def patient_report(
    reader: ReaderDep,
    reports: PhiReportsDep,
    patient_id: Identifier,
    filters: Annotated[PhiFilters, Query()],
) -> EventPage | AccessSummary:
    """PHI events about the patient, newest first; `summary=true`: one row per principal."""
    return await reports.report(reader, "patient_id", patient_id, filters)


@router.get(
    "/principals/{principal_id}",
    response_model=EventPage | AccessSummary,
    responses=ERRORS,
    summary="Whose PHI this principal accessed",
)
async def principal_report(
    reader: ReaderDep,
    reports: PhiReportsDep,
    principal_id: Identifier,
    filters: Annotated[PhiFilters, Query()],
) -> EventPage | AccessSummary:
    """PHI events by the principal, newest first; `summary=true`: one row per patient."""
    return await reports.report(reader, "principal_id", principal_id, filters)
