"""Request and response models: the v1 event, bulk answers, queries, queue stats, errors."""

from __future__ import annotations

import functools
import math
import os
import re
import time
import uuid
from datetime import UTC, datetime
from ipaddress import IPv6Address, ip_address
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.core.timefmt import format_timestamp

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold U+0000

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)

LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def _in_range(value: datetime) -> datetime:
    """Event and query times live between 1970 and 9999 (and so convert to UTC safely)."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise PydanticCustomError("timestamp_out_of_range", "time must be between 1970 and 9999")
    return utc


# A dotted quad already in normal form (no leading zeros): it is its own normal text. Parsing
# with the ipaddress module is slow, and every event's address comes through here.
_NORMAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
)


def _plain_address(value: Any) -> str:
    """An IPv4 or IPv6 address in its normal text form (no zone id)."""
    if not isinstance(value, str) or len(value) > 64:
        raise PydanticCustomError("ip_address", "ip_address must be an IP address string")
    if _NORMAL_IPV4.fullmatch(value):
        return value
    normal = _normal_address(value)
    if normal is None:
        raise PydanticCustomError("ip_address", "ip_address is not an IP address")
    if normal == "":
        raise PydanticCustomError("ip_address", "ip_address must not carry a zone id")
    return normal


@functools.lru_cache(maxsize=4096)
def _normal_address(value: str) -> str | None:
    """The normal text of an address; None: not one; "": an IPv6 address with a zone id."""
    try:
        address = ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        return ""
    return str(address)


EventTime = Annotated[AwareDatetime, AfterValidator(_in_range)]

Address = Annotated[str, BeforeValidator(_plain_address)]

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL)]

LongText = Annotated[str, StringConstraints(max_length=4096, pattern=NO_NUL)]

Action = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$"
    ),
]

ActionPrefix = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-.]+$")
]

Order = Literal["asc", "desc"]

MAX_FILTER_VALUES = 20

Status = Literal["attempt", "success", "failure"]

Classification = Literal["PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI"]

Priority = Literal["normal", "high"]

DEFAULT_MAX_DETAILS_BYTES = 64 * 1024

CLIENT = "client"  # validation context key: the body came from a client (see EventIn)


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562) in its text form: 48-bit Unix milliseconds, version 7, random bits
    with the RFC variant, so ids sort by time."""
    return new_event_ids(1)[0]


_VARIANT = {f"{n:x}": f"{0x8 | (n & 0x3):x}" for n in range(16)}  # 10xx: the RFC variant


def new_event_ids(count: int) -> list[str]:
    """`count` UUIDv7s of this millisecond, built as text from one read of the system's random
    source (not a read per event: each read is a system call)."""
    millis = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex()
    prefix = f"{millis[:8]}-{millis[8:]}-7"
    rand = os.urandom(10 * count).hex()
    return [
        f"{prefix}{r[1:4]}-{_VARIANT[r[4]]}{r[5:8]}-{r[8:20]}"
        for r in (rand[i : i + 20] for i in range(0, 20 * count, 20))
    ]


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
    ) -> dict[str, Any]:
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


class Accepted(BaseModel):
    event_id: uuid.UUID


class BulkAccepted(BaseModel):
    accepted: int
    event_ids: list[uuid.UUID]


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


class OrgQueueStats(BaseModel):
    """GET /queue/stats: the caller's organization's part of the queue, nothing service-wide."""

    organization: str
    queued_events: int = Field(description="your events accepted and not yet settled")
    queue_quota: int = Field(description="the most of your events the queue holds at once")
    dead_letter: int = Field(description="your items in the dead-letter streams")
    rate_limit_key_events: float = Field(description="events a second per key and API process")
    rate_limit_org_events: float = Field(
        description="events a second per organization and API process"
    )


class QueueStats(BaseModel):
    """GET /operator/queue/stats: the whole queue, every tenant together."""

    waiting: int = Field(description="stream entries not yet delivered to a writer")
    pending: int = Field(description="stream entries delivered but not yet acknowledged")
    queued_events: int = Field(description="events accepted and not yet persisted")
    dead_letter: int = Field(description="items in the dead-letter stream")
    accepted_total: int = Field(
        description="events answered 202: persisted_total + dead_lettered_events + queued_events"
        " + discarded_events"
    )
    persisted_total: int = Field(description="events settled as stored")
    dead_lettered_events: int = Field(description="events in the dead-letter stream now")
    discarded_events: int = Field(description="dead-lettered events an admin deleted, unstored")
    consumers: int
    oldest_pending_age_ms: int | None
    shards: int = Field(default=1, description="stream shards (AUDIT_STREAM_SHARDS); all summed")


class Readiness(BaseModel):
    """GET /readyz when every dependency answers (503 with the error shape otherwise)."""

    status: Literal["ready"]
    checks: dict[str, str] = Field(description="each dependency and `ok`")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


MAX_DEAD_LETTER_PAGE = 1000

MAX_DEAD_LETTER_PAYLOAD_PAGE = 100

MAX_DEAD_LETTER_SELECTION = 500  # the audit record of a replay or delete names each item

_MAX_STREAM_ID_PART = 2**64 - 1


def is_stream_id(value: str) -> bool:
    """A Redis stream id, `milliseconds-sequence`, each part within 64 bits, after an optional
    `shard:` (a dead letter of a stream shard other than the first)."""
    shard, colon, value = value.rpartition(":")
    if colon and not (shard.isascii() and shard.isdigit() and len(shard) <= 2):
        return False
    ms, sep, seq = value.partition("-")
    parts = (ms, seq)
    if not sep or not all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts):
        return False
    return all(int(p) <= _MAX_STREAM_ID_PART for p in parts)


def _stream_id(value: str) -> str:
    if not is_stream_id(value):
        raise PydanticCustomError("dead_letter_id", "not a dead-letter id (like 1700000000000-0)")
    return value


DeadLetterId = Annotated[
    str,
    StringConstraints(max_length=41),
    AfterValidator(_stream_id),
    # Documents the form _stream_id checks; its own error says what is wrong more plainly.
    Field(json_schema_extra={"pattern": r"^[0-9]{1,20}-[0-9]{1,20}$"}),
]


class DeadLetterQuery(BaseModel):
    """Query parameters of GET /queue/dead-letter."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=100, ge=1, le=MAX_DEAD_LETTER_PAGE)
    cursor: Annotated[str, StringConstraints(max_length=64)] | None = None
    include_payload: bool = False

    @model_validator(mode="after")
    def _payload_pages_are_smaller(self) -> DeadLetterQuery:
        if self.include_payload and self.limit > MAX_DEAD_LETTER_PAYLOAD_PAGE:
            limit = MAX_DEAD_LETTER_PAYLOAD_PAGE
            raise ValueError(f"limit is at most {limit} with include_payload")
        return self


class DeadLetterOut(BaseModel):
    id: str = Field(description="the dead-letter id (a Redis stream id); pages continue after it")
    source: Priority = Field(description="the stream it came from, and returns to on replay")
    error: str = Field(description="error class, SQLSTATE, table, column, constraint; no values")
    deliveries: int = Field(description="times writers received it, over all its replays")
    replays: int = Field(description="times it was replayed")
    events: int
    event_ids: list[str]
    first_failed: datetime = Field(description="when it first reached the dead-letter stream")
    failed_at: datetime = Field(description="when it last reached the dead-letter stream")
    payload: list[Any] | None = Field(
        default=None, description="the queued records, with include_payload=true"
    )


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    next_cursor: str | None


def _one_selection(ids: list[str] | None, everything: bool) -> None:
    if (ids is None) == (not everything):
        raise ValueError("select dead letters with either ids or all=true")


class DeadLetterSelection(BaseModel):
    """Body of POST /queue/dead-letter/replay: `{"ids": [...]}` or `{"all": true}`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ids: list[DeadLetterId] | None = Field(
        default=None, min_length=1, max_length=MAX_DEAD_LETTER_SELECTION
    )
    all: bool = Field(default=False, description=f"the oldest {MAX_DEAD_LETTER_SELECTION}")

    @model_validator(mode="after")
    def _one_way(self) -> DeadLetterSelection:
        _one_selection(self.ids, self.all)
        return self


class DeadLetterDeleteQuery(BaseModel):
    """Query parameters of DELETE /queue/dead-letter (`ids` repeated, or `all=true`)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[DeadLetterId] | None = Field(
        default=None, min_length=1, max_length=MAX_DEAD_LETTER_SELECTION
    )
    all: bool = Field(default=False, description=f"the oldest {MAX_DEAD_LETTER_SELECTION}")
    confirm: Annotated[str, StringConstraints(max_length=16)] | None = Field(
        default=None, description="must be `delete`"
    )

    @model_validator(mode="after")
    def _one_way(self) -> DeadLetterDeleteQuery:
        _one_selection(self.ids, self.all)
        return self


class DeadLetterReplayed(BaseModel):
    requeued_entries: int
    requeued_events: int
    requeued_ids: list[str]
    not_found: list[str] = Field(description="ids not in your organization's dead letters")
    refused: list[str] = Field(
        default_factory=list,
        description="items no writer vouched for (their MAC does not check): not replayed",
    )
    remaining: int = Field(description="your organization's items still dead-lettered")


class DeadLetterDeleted(BaseModel):
    deleted_entries: int
    deleted_events: int = Field(description="counted in discarded_events of /queue/stats")
    deleted_ids: list[str]
    not_found: list[str] = Field(description="ids not in your organization's dead letters")
    remaining: int = Field(description="your organization's items still dead-lettered")
