"""Reading events: a page of a search, one event, an export of a whole selection. Each read is
scoped to the reader's organization and recorded in its audit trail (app.queue.trail)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import NotFound
from app.core.limits import Slot, Slots, TooManyExports
from app.queue.recorder import Recorder
from app.queue.trail import Reader, record_read
from app.read import exports, queries
from app.read.cursors import decode_cursor, encode_cursor
from app.read.models import EventFilters, EventOut, EventPage, ExportFilters


@dataclass(frozen=True, slots=True)
class Export:
    """An export under way: its bytes, sent in a stream that holds `slot` until it ends and
    gives up on a client that takes nothing for `send_timeout_s`; `finish` is told how it
    ended, and records what was sent."""

    chunks: AsyncIterator[bytes]
    slot: Slot
    media_type: str
    filename: str
    send_timeout_s: float
    finish: Callable[[str], Awaitable[None]]


class EventReads:
    def __init__(
        self,
        engine: AsyncEngine,
        long_reads: AsyncEngine,
        recorder: Recorder,
        exports: Slots,
        send_timeout_s: float,
    ) -> None:
        self._engine = engine
        self._long_reads = long_reads  # exports, apart from the short queries
        self._recorder = recorder
        self._exports = exports
        self._send_timeout_s = send_timeout_s

    async def search(self, reader: Reader, filters: EventFilters) -> EventPage:
        """A page of the reader's events that match, in the asked order from the cursor on."""
        after = decode_cursor(filters.cursor, filters.order) if filters.cursor else None
        query = queries.EventQuery(
            organization_id=reader.caller.organization_id,
            after=after,
            **filters.model_dump(exclude={"cursor"}),
        )
        async with self._engine.connect() as conn:
            rows, more = await queries.query_events(conn, query)
        items = [EventOut.model_validate(queries.event_row_to_dict(row)) for row in rows]
        await record_read(self._recorder, reader, "query", filters.model_dump(), len(items))
        last = rows[-1] if more else None
        next_cursor = encode_cursor(last.timestamp, last.event_id, filters.order) if last else None
        return EventPage(items=items, next_cursor=next_cursor)

    async def event(self, reader: Reader, event_id: uuid.UUID) -> EventOut:
        """One of the reader's events (NotFound: none of theirs has this id)."""
        organization = reader.caller.organization_id
        async with self._engine.connect() as conn:
            row = await queries.get_event(conn, organization, event_id)
        found = int(row is not None)
        await record_read(self._recorder, reader, "read", {"event_id": str(event_id)}, found)
        if row is None:
            raise NotFound("no such event in your organization")
        return EventOut.model_validate(queries.event_row_to_dict(row))

    async def export(self, reader: Reader, filters: ExportFilters) -> Export:
        """Every matching event of the reader's, in one format: recorded as it starts and
        again as it ends, with the rows sent and how it ended. It holds one of the export slots
        (TooManyExports: none free for this key, its organization or the process)."""
        caller = reader.caller
        query = queries.EventQuery(
            organization_id=caller.organization_id, **filters.model_dump(exclude={"format"})
        )
        asked = filters.model_dump()
        slot = self._exports.acquire(caller.key_id, caller.organization_id, TooManyExports)
        try:
            await record_read(self._recorder, reader, "export", {**asked, "phase": "start"}, 0)
        except BaseException:
            slot.release()
            raise
        sent = [0]

        async def finish(ending: str) -> None:
            """What the export sent, however it ended (an early end says how)."""
            end = {"phase": "complete"} if ending == "complete" else {"phase": "ended_early"}
            if ending != "complete":
                end["ended"] = ending
            await record_read(self._recorder, reader, "export", {**asked, **end}, sent[0])

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return Export(
            chunks=exports.export_chunks(self._long_reads, query, filters.format, sent),
            slot=slot,
            media_type=exports.MEDIA_TYPES[filters.format],
            filename=f"audit-events-{stamp}.{exports.EXTENSIONS[filters.format]}",
            send_timeout_s=self._send_timeout_s,
            finish=finish,
        )
