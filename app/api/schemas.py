"""HTTP request and response models: accepted events, queue stats, dead letters, errors (the
event a client sends is app.events.model.EventIn; what a read takes and answers, events and
their filters, pages and reports, is app.read.models)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.events.fields import Priority
from app.queue.dead_letters import MOST_SELECTED


class Accepted(BaseModel):
    event_id: uuid.UUID


class BulkAccepted(BaseModel):
    accepted: int
    event_ids: list[uuid.UUID]


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

MAX_DEAD_LETTER_SELECTION = MOST_SELECTED  # the audit record of a replay or delete names each

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
