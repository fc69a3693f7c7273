"""Streaming exports of the audit log: NDJSON and CSV, any size, in constant memory.

Rows are read in keyset pages on one connection and written out page by page; nothing holds more
than a page. NDJSON lines are built by PostgreSQL itself (json_build_object), so a page reaches
Python as ready text: the export runs at the database's speed. Its times are in the canonical
form (UTC, six fraction digits, `Z`), as hashed. CSV cells that a spreadsheet would run as a
formula (starting with = + - @, a tab or a carriage return) are prefixed with a single quote.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import dataclasses
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, and_, case, cast, func, literal
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.fhir import export as fhir
from app.read import queries
from app.store.models import audit_log

PAGE = 1000

MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv", "fhir": "application/fhir+json"}

EXTENSIONS = {"ndjson": "ndjson", "csv": "csv", "fhir": "json"}

CSV_COLUMNS = (
    "event_id",
    "timestamp",
    "received_at",
    "organization_id",
    "action",
    "status",
    "principal_id",
    "principal_type",
    "target_resource_type",
    "target_resource_id",
    "patient_id",
    "data_classification",
    "purpose_of_use",
    "break_glass",
    "outcome_description",
    "correlation_id",
    "session_id",
    "ip_address",
    "user_agent",
    "details",
    "priority",
    "api_key_id",
    "hash",
    "signature",
    "key_id",
)

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


async def export_rows(
    engine: AsyncEngine, query: queries.EventQuery, counted: list[int]
) -> AsyncIterator[dict[str, Any]]:
    """Every matching row as the API shows it; `counted[0]` grows as rows go out."""
    async with engine.connect() as conn:
        page = dataclasses.replace(query, limit=PAGE, after=None)
        while True:
            rows, more = await queries.query_events(conn, page)
            for row in rows:
                counted[0] += 1
                yield queries.event_row_to_dict(row)
            if not more:
                return
            page = dataclasses.replace(page, after=(rows[-1].timestamp, rows[-1].event_id))


NDJSON_PAGE = 5000

EXPORT_BUILDERS = 2

EXPORT_CONNECTIONS = EXPORT_BUILDERS + 1  # an NDJSON export's builders and its key reader

CANONICAL_TIME = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def _time(column: Any) -> Any:
    return func.to_char(func.timezone("UTC", column), CANONICAL_TIME)


# Columns whose text needs no JSON escaping: a uuid, CHECK-constrained words, hex, formatted
# times. Every other text column goes through to_json, which escapes it.
PLAIN_TEXT = frozenset({"event_id", "status", "data_classification", "priority"})


def _json_value(name: str) -> tuple[str, Any]:
    """The format() placeholder of one field, and the SQL giving its text."""
    c = audit_log.c
    if name in {"timestamp", "received_at"}:
        return '"%s"', _time(c[name])
    if name in {"hash", "signature"}:
        return '"%s"', func.encode(c[name], "hex")
    if name in PLAIN_TEXT:
        return '"%s"', c[name]
    if name == "break_glass":
        return "%s", case((c.break_glass, literal("true")), else_=literal("false"))
    if name in {"batch_id", "leaf_index"}:
        return "%s", func.coalesce(cast(c[name], Text), "null")
    if name == "details":
        return "%s", func.coalesce(cast(c.details, Text), "null")
    if name == "session_context":
        nested = func.json_build_object(
            "session_id", c.session_id, "ip_address", c.ip_address, "user_agent", c.user_agent
        )
        none = and_(c.session_id.is_(None), c.ip_address.is_(None), c.user_agent.is_(None))
        return "%s", case((none, literal("null")), else_=cast(nested, Text))
    return "%s", func.coalesce(cast(func.to_json(c[name]), Text), "null")


def _ndjson_line_sql() -> Any:
    """One event as the API shows it (see queries.event_row_to_dict), as JSON text. One
    format() call with the escaping done per field costs PostgreSQL less than
    json_build_object does."""
    parts, values = [], []
    for name in queries.EVENT_FIELDS:
        placeholder, value = _json_value(name)
        parts.append(f'"{name}":{placeholder}')
        values.append(value)
    template = "{" + ",".join(parts) + "}"
    return func.format(literal(template, Text), *values)


async def _page_end(
    conn: AsyncConnection, query: queries.EventQuery
) -> tuple[datetime, uuid.UUID] | None:
    """The position of the NDJSON_PAGE-th row after `query.after`, None when fewer remain: an
    index walk that reads no more than the keys (and what the filters need)."""
    c = audit_log.c
    stmt = (
        queries.event_select(query)
        .with_only_columns(c.timestamp, c.event_id)
        .offset(NDJSON_PAGE - 1)
        .limit(1)
    )
    row = (await conn.execute(stmt)).first()
    return (row[0], row[1]) if row else None


async def _page_text(conn: AsyncConnection, query: queries.EventQuery, line: Any) -> bytes:
    """The page's NDJSON lines, made by PostgreSQL; read as plain asyncpg rows of one text."""
    stmt = queries.event_select(query).with_only_columns(line).limit(None)
    # Expanding parameters (`action IN (...)` of repeated filters) rendered into the SQL text.
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None, "a live pooled connection has its driver connection"
    rows = await raw.fetch(compiled.string, *params)
    return ("\n".join([r[0] for r in rows]) + "\n").encode() if rows else b""


async def ndjson_pages(
    engine: AsyncEngine, query: queries.EventQuery, counted: list[int]
) -> AsyncIterator[bytes]:
    """Every matching event as NDJSON, one chunk per page of about NDJSON_PAGE lines.

    Building JSON is the costly part, so EXPORT_BUILDERS connections build pages at once (one
    PostgreSQL backend, one core, each) while one more finds where the next page ends; pages
    go out in order, in pieces of whole lines. Each page is bounded by keys, so an event
    inserted meanwhile within a page makes it a line longer, and none is skipped or
    repeated."""
    line = _ndjson_line_sql()
    async with contextlib.AsyncExitStack() as stack:
        keys = await stack.enter_async_context(engine.connect())
        builders = [
            await stack.enter_async_context(engine.connect()) for _ in range(EXPORT_BUILDERS)
        ]
        pending: collections.deque[asyncio.Task[bytes]] = collections.deque()
        after: tuple[datetime, uuid.UUID] | None = None
        finished, made = False, 0
        try:
            while pending or not finished:
                while not finished and len(pending) < EXPORT_BUILDERS:
                    bound = dataclasses.replace(query, after=after, until=None)
                    end = await _page_end(keys, bound)
                    page = dataclasses.replace(bound, until=end)
                    conn = builders[made % EXPORT_BUILDERS]
                    pending.append(asyncio.create_task(_page_text(conn, page, line)))
                    made, after, finished = made + 1, end, end is None
                for piece in _pieces(await pending.popleft()):
                    counted[0] += piece.count(b"\n")
                    yield piece
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


SEND_PIECE = 64 * 1024


def _pieces(page: bytes) -> Iterator[bytes]:
    """A page's lines in pieces of about SEND_PIECE bytes, whole lines each: a page is sent a
    piece at a time, so what an export sent before its client left is known to a piece."""
    start = 0
    while start < len(page):
        end = page.rfind(b"\n", start, start + SEND_PIECE) + 1
        if end <= start:  # one line longer than a piece: the whole line
            end = page.find(b"\n", start) + 1 or len(page)
        yield page[start:end]
        start = end


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif hasattr(value, "isoformat"):
        text = value.isoformat()
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_header() -> bytes:
    return _csv_line(list(CSV_COLUMNS))


def csv_row(event: dict[str, Any]) -> bytes:
    session = event.get("session_context") or {}
    flat = {**event, **{k: session.get(k) for k in ("session_id", "ip_address", "user_agent")}}
    return _csv_line([_cell(flat.get(column)) for column in CSV_COLUMNS])


def _csv_line(cells: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue().encode()


async def export_chunks(
    engine: AsyncEngine, query: queries.EventQuery, fmt: str, sent: list[int]
) -> AsyncIterator[bytes]:
    """The export's bytes in `fmt` (a key of MEDIA_TYPES), in pieces of about SEND_PIECE (a
    CSV row or a FHIR entry alone would be a send each); `sent[0]` counts the rows of the
    pieces taken so far (a piece is taken when the next one is asked for: its send returned)."""
    made = [0]  # rows in the chunks made so far, the one being sent included
    if fmt == "fhir":
        chunks = fhir.bundle(export_rows(engine, query, made))
    elif fmt == "csv":
        chunks = _csv(export_rows(engine, query, made))
    else:
        chunks = ndjson_pages(engine, query, made)
    piece: list[bytes] = []
    size = 0
    async for chunk in chunks:
        piece.append(chunk)
        size += len(chunk)
        if size >= SEND_PIECE:
            rows = made[0]
            yield b"".join(piece)
            sent[0] = rows
            piece, size = [], 0
    if piece:
        rows = made[0]
        yield b"".join(piece)
        sent[0] = rows


async def _csv(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    yield csv_header()
    async for event in events:
        yield csv_row(event)
