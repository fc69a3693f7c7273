"""PHI access reports: who accessed this patient's PHI, and whose PHI this principal accessed;
the events themselves (newest first) or one row per counterpart. Scoped to the reader's
organization and recorded as `audit.phi_access` like every other read of the audit log."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.queue.recorder import Recorder
from app.queue.trail import Reader, record_read
from app.read import queries
from app.read.cursors import (
    decode_cursor,
    decode_key_cursor,
    encode_cursor,
    encode_key_cursor,
)
from app.read.models import AccessCount, AccessSummary, EventOut, EventPage, PhiFilters, Subject


class PhiReports:
    def __init__(self, engine: AsyncEngine, recorder: Recorder) -> None:
        self._engine = engine
        self._recorder = recorder

    async def report(
        self, reader: Reader, subject: Subject, value: str, filters: PhiFilters
    ) -> EventPage | AccessSummary:
        """The events about `value` (the patient or principal `subject` names), or with
        `filters.summary` the counts per counterpart."""
        if filters.summary:
            return await self.summary(reader, subject, value, filters)
        return await self.events(reader, subject, value, filters)

    async def events(
        self, reader: Reader, subject: Subject, value: str, filters: PhiFilters
    ) -> EventPage:
        filters = filters.model_copy(update={"summary": False})
        query = self._query(reader, subject, value, filters)
        position = decode_cursor(filters.cursor) if filters.cursor else None
        async with self._engine.connect() as conn:
            rows, more = await queries.phi_events(conn, query, position)
        items = [EventOut.model_validate(queries.event_row_to_dict(row)) for row in rows]
        last = rows[-1] if more else None
        page = EventPage(
            items=items, next_cursor=encode_cursor(last.timestamp, last.event_id) if last else None
        )
        await self._record(reader, subject, value, filters, len(items))
        return page

    async def summary(
        self, reader: Reader, subject: Subject, value: str, filters: PhiFilters
    ) -> AccessSummary:
        filters = filters.model_copy(update={"summary": True})
        query = self._query(reader, subject, value, filters)
        after = decode_key_cursor(filters.cursor) if filters.cursor else None
        async with self._engine.connect() as conn:
            rows, more = await queries.phi_counts(conn, query, after)
        items = [AccessCount.model_validate(dict(row._mapping)) for row in rows]
        summary = AccessSummary(
            items=items, next_cursor=encode_key_cursor(items[-1].counterpart) if more else None
        )
        await self._record(reader, subject, value, filters, len(items))
        return summary

    def _query(
        self, reader: Reader, subject: Subject, value: str, filters: PhiFilters
    ) -> queries.PhiQuery:
        return queries.PhiQuery(
            organization_id=reader.caller.organization_id,
            subject=subject,
            value=value,
            start=filters.start,
            end=filters.end,
            limit=filters.limit,
        )

    async def _record(
        self, reader: Reader, subject: Subject, value: str, filters: PhiFilters, rows: int
    ) -> None:
        details: dict[str, Any] = {subject: value, **filters.model_dump(exclude={"cursor"})}
        await record_read(self._recorder, reader, "phi_access", details, rows)
