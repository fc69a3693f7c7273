"""The event (v1) as the API takes it, with its id and time made on the client."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["attempt", "success", "failure"]
Classification = Literal["PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI"]
Priority = Literal["normal", "high"]


def uuid7() -> str:
    """A version-7 UUID: its first 48 bits the time in milliseconds, so ids sort by time."""
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return str(uuid.UUID(int=value))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class SessionContext:
    session_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One audit event. `event_id` and `timestamp` are fixed when the event is made: a resend
    after a timeout is the same event, and the service stores it once."""

    action: str
    status: Status
    principal_id: str
    principal_type: str | None = None
    target_resource_type: str | None = None
    target_resource_id: str | None = None
    patient_id: str | None = None
    data_classification: Classification | None = None
    purpose_of_use: str | None = None
    break_glass: bool | None = None
    outcome_description: str | None = None
    correlation_id: str | None = None
    session_context: SessionContext | None = None
    details: dict[str, Any] | None = None
    priority: Priority | None = None
    event_id: str = field(default_factory=uuid7)
    timestamp: str = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the API takes (fields left unset are left out)."""
        body = {k: v for k, v in asdict(self).items() if v is not None}
        if self.session_context is not None:
            session = {k: v for k, v in asdict(self.session_context).items() if v is not None}
            body["session_context"] = session
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Event:
        values = dict(body)
        if isinstance(values.get("session_context"), dict):
            values["session_context"] = SessionContext(**values["session_context"])
        return cls(**values)
