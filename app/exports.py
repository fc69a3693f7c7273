"""Streaming exports of the audit log: NDJSON and CSV, any size, in constant memory.

Rows are read in keyset pages on one connection and written out page by page; nothing holds more
than a page. CSV cells that a spreadsheet would run as a formula (starting with = + - @, a tab or
a carriage return) are prefixed with a single quote.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from app import repository

PAGE = 1000
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
    "hash",
    "signature",
    "key_id",
)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


async def export_rows(
    engine: AsyncEngine, query: repository.EventQuery, counted: list[int]
) -> AsyncIterator[dict[str, Any]]:
    """Every matching row as the API shows it; `counted[0]` grows as rows go out."""
    async with engine.connect() as conn:
        page = dataclasses.replace(query, limit=PAGE, after=None)
        while True:
            rows, more = await repository.query_events(conn, page)
            for row in rows:
                counted[0] += 1
                yield repository.event_row_to_dict(row)
            if not more:
                return
            page = dataclasses.replace(page, after=(rows[-1].timestamp, rows[-1].event_id))


def _json_default(value: Any) -> Any:
    return str(value)


NDJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z  # column names are str subclasses


def ndjson_line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, default=_json_default, option=NDJSON_OPTIONS) + b"\n"


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
