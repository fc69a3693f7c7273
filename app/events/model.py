"""The v1 event as a client sends it (EventIn), validated strictly, and its record
(EventIn.to_record), with the defaults the server fills in."""

from __future__ import annotations

import math
import uuid
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.core.timefmt import format_timestamp
from app.events.fields import (
    Action,
    Address,
    Classification,
    EventTime,
    Identifier,
    LongText,
    Priority,
    Status,
)
from app.events.ids import new_event_id
from app.events.record import EventRecord

DEFAULT_MAX_DETAILS_BYTES = 64 * 1024

CLIENT = "client"  # validation context key: the body came from a client (see EventIn)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


class SessionContext(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: Identifier | None = None
    ip_address: Address | None = None
    user_agent: LongText | None = None


class EventIn(BaseModel):
    """One audit event as a client sends it. Unknown fields are rejected, never dropped."""

    model_config = ConfigDict(extra="forbid", strict=True)

    action: Action
    status: Status
    principal_id: Identifier
    event_id: uuid.UUID | None = None
    timestamp: EventTime | None = None
    principal_type: Identifier | None = None
    target_resource_type: Identifier | None = None
    target_resource_id: Identifier | None = None
    patient_id: Identifier | None = None
    data_classification: Classification = "INTERNAL"
    purpose_of_use: Identifier | None = None
    break_glass: bool = False
    outcome_description: LongText | None = None
    correlation_id: Identifier | None = None
    session_context: SessionContext | None = None
    details: dict[str, Any] | None = None
    priority: Priority = "normal"

    @field_validator("action")
    @classmethod
    def _not_reserved(cls, value: str, info: ValidationInfo) -> str:
        """`audit.*` is the service's own record of who read the trail: a client's event there
        could pass for one. Only events sent by clients (CLIENT in the context) are checked."""
        if (info.context or {}).get(CLIENT) and value.split(".", 1)[0].lower() == "audit":
            raise PydanticCustomError(
                "reserved_action", "actions audit and audit.* are reserved for the service"
            )
        return value

    @field_validator("details")
    @classmethod
    def _details_fit(cls, value: dict[str, Any] | None, info: ValidationInfo) -> Any:
        if value is None:
            return None
        limit = (info.context or {}).get("max_details_bytes", DEFAULT_MAX_DETAILS_BYTES)
        try:
            encoded = orjson.dumps(value)
        except TypeError as exc:
            raise PydanticCustomError(
                "details_unencodable",
                "details holds a value JSON cannot carry: {reason}",
                {"reason": str(exc)},
            ) from exc
        # orjson writes a non-finite float as null; only then is the walk worth its cost.
        if b"null" in encoded and _has_non_finite(value):
            raise PydanticCustomError(
                "details_unencodable", "details holds a number out of the float range"
            )
        size = len(encoded)
        if size > limit:
            raise PydanticCustomError(
                "details_too_large",
                "details is {size} bytes encoded; the limit is {limit}",
                {"size": size, "limit": limit},
            )
        return value

    def to_record(
        self,
        organization_id: str,
        received_at: str,
        fresh_id: str | None = None,
        api_key_id: str | None = None,
    ) -> EventRecord:
        """The stored, canonical record (see app.ledger.hashing) with server-filled defaults;
        `fresh_id` is the id to give an event sent without one (one is made when None),
        `api_key_id` the id of the key that sent it."""
        session = self.session_context
        return {
            "action": self.action,
            "api_key_id": api_key_id,
            "break_glass": self.break_glass,
            "correlation_id": self.correlation_id,
            "data_classification": self.data_classification,
            "details": self.details,
            "event_id": str(self.event_id) if self.event_id else fresh_id or new_event_id(),
            "ip_address": session.ip_address if session else None,
            "organization_id": organization_id,
            "outcome_description": self.outcome_description,
            "patient_id": self.patient_id,
            "principal_id": self.principal_id,
            "principal_type": self.principal_type,
            "priority": self.priority,
            "purpose_of_use": self.purpose_of_use,
            "received_at": received_at,
            "session_id": session.session_id if session else None,
            "status": self.status,
            "target_resource_id": self.target_resource_id,
            "target_resource_type": self.target_resource_type,
            "timestamp": format_timestamp(self.timestamp) if self.timestamp else received_at,
            "user_agent": session.user_agent if session else None,
        }


EVENT_LIST = TypeAdapter(list[EventIn])
