"""The event (v1) as the API takes it, with its id and time made on the client, and its fields'
types and JSON checked when it is made (what the service would refuse for its form; its limits,
lengths and patterns, are the service's to check)."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, get_args

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


def _check_text(owner: object, names: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    for name in names:
        value = getattr(owner, name)
        if value is None and name not in required:
            continue
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")


def _check_choice(name: str, value: object, choices: tuple[str, ...], required: bool) -> None:
    if value is None and not required:
        return
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _details_json(details: dict[str, Any]) -> str:
    """`details` as JSON; TypeError or ValueError naming it when JSON cannot carry it (a
    datetime, a set, a non-finite float, a cycle)."""
    try:
        return json.dumps(details, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        error = TypeError if isinstance(exc, TypeError) else ValueError
        raise error(f"details holds a value JSON cannot carry: {exc}") from None


@dataclass(frozen=True, slots=True)
class SessionContext:
    session_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None

    def __post_init__(self) -> None:
        _check_text(self, ("session_id", "ip_address", "user_agent"))


_TEXT_FIELDS = (
    "action",
    "principal_id",
    "principal_type",
    "target_resource_type",
    "target_resource_id",
    "patient_id",
    "purpose_of_use",
    "outcome_description",
    "correlation_id",
    "event_id",
    "timestamp",
)

_CLASSES: tuple[str, ...] = get_args(Classification)


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

    def __post_init__(self) -> None:
        """TypeError or ValueError, naming the field, for what the service would refuse
        whatever its limits: a field of the wrong type, a status or classification it does not
        know, details JSON cannot carry."""
        _check_text(self, _TEXT_FIELDS, required=("action", "principal_id"))
        _check_choice("status", self.status, get_args(Status), required=True)
        _check_choice("data_classification", self.data_classification, _CLASSES, False)
        _check_choice("priority", self.priority, get_args(Priority), required=False)
        if self.break_glass is not None and not isinstance(self.break_glass, bool):
            raise TypeError(f"break_glass must be a bool, not {type(self.break_glass).__name__}")
        if self.session_context is not None and not isinstance(
            self.session_context, SessionContext
        ):
            raise TypeError("session_context must be a SessionContext")
        if self.details is not None:
            if not isinstance(self.details, dict):
                raise TypeError(f"details must be a dict, not {type(self.details).__name__}")
            _details_json(self.details)

    def encode(self) -> bytes:
        """The event as the API takes it, in JSON. `details` is a dict the caller may still
        change after the event was made: when JSON can no longer carry it, TypeError or
        ValueError naming it."""
        body = self.to_json()
        details = body.pop("details", None)
        text = json.dumps(body, separators=(",", ":"))
        if details is not None:
            text = f'{text[:-1]},"details":{_details_json(details)}}}'
        return text.encode()

    def to_json(self) -> dict[str, Any]:
        """The JSON object the API takes (fields left unset are left out)."""
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body = {k: v for k, v in body.items() if v is not None}
        if self.session_context is not None:
            session = {
                f.name: getattr(self.session_context, f.name) for f in fields(SessionContext)
            }
            body["session_context"] = {k: v for k, v in session.items() if v is not None}
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Event:
        values = dict(body)
        if isinstance(values.get("session_context"), dict):
            values["session_context"] = SessionContext(**values["session_context"])
        return cls(**values)
