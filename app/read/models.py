"""What the read services take and answer: a selection of events and its filters, an event as a
reader sees it, a page of them, the PHI-access reports' filters and summaries. The API documents
them as its query parameters and answers; the console's pages show them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.events.fields import (
    Action,
    ActionPrefix,
    Classification,
    EventTime,
    Identifier,
    Status,
)

Order = Literal["asc", "desc"]

MAX_FILTER_VALUES = 20


class SessionContextOut(BaseModel):
    session_id: str | None
    ip_address: str | None
    user_agent: str | None


class EventOut(BaseModel):
    event_id: uuid.UUID
    timestamp: datetime
    received_at: datetime
    organization_id: str
    action: str
    status: str
    principal_id: str
    principal_type: str | None
    target_resource_type: str | None
    target_resource_id: str | None
    patient_id: str | None
    data_classification: str
    purpose_of_use: str | None
    break_glass: bool
    outcome_description: str | None
    correlation_id: str | None
    session_context: SessionContextOut | None
    details: dict[str, Any] | None
    priority: str
    api_key_id: uuid.UUID | None = Field(
        description="the API key that sent the event (none for events stored before keys were"
        " recorded)"
    )
    hash: str = Field(description="SHA-256 of the canonical form, hex")
    signature: str = Field(description="HMAC-SHA256 of the raw hash, hex")
    key_id: str


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class EventSelection(BaseModel):
    """Which events, as GET /events and its export take them; unknown parameters are rejected."""

    model_config = ConfigDict(extra="forbid")

    start: EventTime | None = None
    end: EventTime | None = None
    principal_id: Identifier | None = None
    action: list[Action] | None = Field(default=None, max_length=MAX_FILTER_VALUES)
    action_prefix: ActionPrefix | None = None
    status: list[Status] | None = Field(default=None, max_length=MAX_FILTER_VALUES)
    data_classification: list[Classification] | None = Field(
        default=None, max_length=MAX_FILTER_VALUES
    )
    target_resource_type: Identifier | None = None
    target_resource_id: Identifier | None = None
    patient_id: Identifier | None = None
    correlation_id: Identifier | None = None
    purpose_of_use: Identifier | None = None
    break_glass: bool | None = None
    order: Order = "desc"


class EventFilters(EventSelection):
    """Query parameters of GET /events: the selection, a page at a time."""

    limit: int = Field(default=100, ge=1, le=1000)
    cursor: Annotated[str, StringConstraints(max_length=512)] | None = None


ExportFormat = Literal["ndjson", "csv", "fhir"]


class ExportFilters(EventSelection):
    """Query parameters of an export: the selection, whole, in one format."""

    format: ExportFormat = "ndjson"

    @model_validator(mode="before")
    @classmethod
    def _whole_result(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.keys() & {"cursor", "limit"}:
            raise ValueError("an export streams every matching event: no cursor or limit")
        return data


Subject = Literal["patient_id", "principal_id"]


class PhiFilters(BaseModel):
    """Query parameters of a PHI-access report: its window, events or a summary, a page."""

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
