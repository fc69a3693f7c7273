"""All SQL outside the writer's COPY path: partitions, API keys, event queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Select, and_, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import audit_log


@dataclass(frozen=True, slots=True)
class EventQuery:
    organization_id: str
    start: datetime | None = None
    end: datetime | None = None
    principal_id: str | None = None
    action: Sequence[str] | None = None
    action_prefix: str | None = None
    status: Sequence[str] | None = None
    data_classification: Sequence[str] | None = None
    target_resource_type: str | None = None
    target_resource_id: str | None = None
    patient_id: str | None = None
    correlation_id: str | None = None
    purpose_of_use: str | None = None
    break_glass: bool | None = None
    order: str = "desc"
    limit: int = 100
    after: tuple[datetime, uuid.UUID] | None = None  # keyset position of the last row seen
    until: tuple[datetime, uuid.UUID] | None = None  # the last position wanted (inclusive)


EQUALITY_FILTERS = (
    "principal_id",
    "correlation_id",
    "purpose_of_use",
    "break_glass",
    "target_resource_type",
    "target_resource_id",
    "patient_id",
)

ANY_OF_FILTERS = ("action", "status", "data_classification")


def event_select(query: EventQuery) -> Select[Any]:
    c = audit_log.c
    conditions = [c.organization_id == query.organization_id]
    for name in EQUALITY_FILTERS:
        value = getattr(query, name)
        if value is not None:
            conditions.append(c[name] == value)
    for name in ANY_OF_FILTERS:
        values = getattr(query, name)
        if values:
            conditions.append(c[name] == values[0] if len(values) == 1 else c[name].in_(values))
    if query.action_prefix is not None:
        conditions.append(c.action.startswith(query.action_prefix, autoescape=True))
    if query.start is not None:
        conditions.append(c.timestamp >= query.start)
    if query.end is not None:
        conditions.append(c.timestamp < query.end)
    newest_first = query.order == "desc"
    # Keyset bounds, each also as a plain time bound: PostgreSQL prunes partitions by those
    # (a row comparison alone makes it probe every partition).
    position = tuple_(c.timestamp, c.event_id)
    if query.after is not None:
        after, moment = tuple_(*query.after), query.after[0]
        conditions.append(position < after if newest_first else position > after)
        conditions.append(c.timestamp <= moment if newest_first else c.timestamp >= moment)
    if query.until is not None:
        until, moment = tuple_(*query.until), query.until[0]
        conditions.append(position >= until if newest_first else position <= until)
        conditions.append(c.timestamp >= moment if newest_first else c.timestamp <= moment)
    ordering = (
        (c.timestamp.desc(), c.event_id.desc()) if newest_first else (c.timestamp, c.event_id)
    )
    return select(audit_log).where(and_(*conditions)).order_by(*ordering).limit(query.limit + 1)


# The fields of an event as the API shows it, in order (the row's columns, the session nested).
SESSION_FIELDS = ("session_id", "ip_address", "user_agent")

EVENT_FIELDS = (
    *(c.name for c in audit_log.columns if c.name not in SESSION_FIELDS),
    "session_context",
)


def event_row_to_dict(row: Any) -> dict[str, Any]:
    """A stored row as the API shows it: hashes hex, session fields nested, details parsed."""
    values = dict(row._mapping)
    session = {k: values.pop(k) for k in SESSION_FIELDS}
    values["session_context"] = session if any(v is not None for v in session.values()) else None
    details = values["details"]
    values["details"] = orjson.loads(details) if isinstance(details, str | bytes) else details
    values["hash"] = bytes(values["hash"]).hex()
    values["signature"] = bytes(values["signature"]).hex()
    return values


async def query_events(conn: AsyncConnection, query: EventQuery) -> tuple[list[Any], bool]:
    """One page of rows, newest first, and whether more follow."""
    rows = list(await conn.execute(event_select(query)))
    return rows[: query.limit], len(rows) > query.limit


def _event_by_id(organization_id: str, event_id: uuid.UUID) -> Select[Any]:
    c = audit_log.c
    return select(audit_log).where(c.event_id == event_id, c.organization_id == organization_id)


async def get_event(conn: AsyncConnection, organization_id: str, event_id: uuid.UUID) -> Any | None:
    """The event with this id; should a client have reused the id with another timestamp,
    the earliest of them."""
    rows = list(await conn.execute(_event_by_id(organization_id, event_id)))
    return min(rows, key=lambda row: row.timestamp) if rows else None


@dataclass(frozen=True, slots=True)
class PhiQuery:
    organization_id: str
    subject: str  # "patient_id" or "principal_id": the column the report is about
    value: str
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 100

    @property
    def counterpart(self) -> str:
        return "principal_id" if self.subject == "patient_id" else "patient_id"


def _phi_conditions(query: PhiQuery) -> list[Any]:
    c = audit_log.c
    conditions = [
        c.organization_id == query.organization_id,
        c[query.subject] == query.value,
        c.data_classification == "PHI",
    ]
    if query.subject == "principal_id":
        conditions.append(c.patient_id.is_not(None))
    if query.start is not None:
        conditions.append(c.timestamp >= query.start)
    if query.end is not None:
        conditions.append(c.timestamp < query.end)
    return conditions


def _phi_events_select(query: PhiQuery, after: tuple[datetime, uuid.UUID] | None) -> Select[Any]:
    c = audit_log.c
    conditions = _phi_conditions(query)
    if after is not None:
        conditions.append(tuple_(c.timestamp, c.event_id) < tuple_(*after))
    return (
        select(audit_log)
        .where(and_(*conditions))
        .order_by(c.timestamp.desc(), c.event_id.desc())
        .limit(query.limit + 1)
    )


async def phi_events(
    conn: AsyncConnection, query: PhiQuery, after: tuple[datetime, uuid.UUID] | None
) -> tuple[list[Any], bool]:
    rows = list(await conn.execute(_phi_events_select(query, after)))
    return rows[: query.limit], len(rows) > query.limit


def _phi_counts_select(query: PhiQuery, after: str | None) -> Select[Any]:
    c = audit_log.c
    other = c[query.counterpart]
    conditions = _phi_conditions(query)
    if after is not None:
        conditions.append(other > after)
    return (
        select(
            other.label("counterpart"),
            func.count().label("accesses"),
            func.count().filter(c.break_glass).label("break_glass_accesses"),
            func.min(c.timestamp).label("first_access"),
            func.max(c.timestamp).label("last_access"),
        )
        .where(and_(*conditions))
        .group_by(other)
        .order_by(other)
        .limit(query.limit + 1)
    )


async def phi_counts(
    conn: AsyncConnection, query: PhiQuery, after: str | None
) -> tuple[list[Any], bool]:
    rows = list(await conn.execute(_phi_counts_select(query, after)))
    return rows[: query.limit], len(rows) > query.limit
