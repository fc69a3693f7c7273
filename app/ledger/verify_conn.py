"""The connection a verification reads the log through, set up so rows decode cheaply.

asyncpg decodes a timestamptz from its binary form by adding a timedelta to an epoch: over a
microsecond a value on the benchmark's host, two values an event, more than the 17 text columns
of a row together. PostgreSQL's ISO text of the same value in UTC, parsed by
`datetime.fromisoformat`, is the same aware datetime (in UTC, to the microsecond) for about a
third of that, and PostgreSQL writes the text for about what it costs to send the binary. The
session is set to UTC and ISO dates so the text is always that form. A value that PostgreSQL
holds and a datetime cannot (infinity, a year past 9999, a date BC: never one the service
writes, so only a tampered row has one) reads as the latest or earliest datetime, as asyncpg's
binary decoder reads infinity: the row's hash no longer matches and verification names it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg

from app.core.timefmt import format_timestamp

LATEST = datetime.max.replace(tzinfo=UTC)

EARLIEST = datetime.min.replace(tzinfo=UTC)

SESSION_FOR_TEXT_TIMES = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'"


async def read_times_as_text(conn: asyncpg.Connection) -> None:
    """Have `conn` send timestamptz values as text and decode them with fromisoformat (and
    encode parameters as canonical UTC text: an aware datetime, as the binary encoder takes it;
    a naive one is refused, not read in some local zone)."""
    await conn.execute(SESSION_FOR_TEXT_TIMES)
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=format_timestamp,
        decoder=parse_stored_time,
        format="text",
    )


def parse_stored_time(text: str) -> datetime:
    """A timestamptz as PostgreSQL writes it in the session above; past what a datetime holds:
    LATEST (infinity, a year after 9999) or EARLIEST (-infinity, a date BC)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        if text.startswith("-") or text.endswith(" BC"):
            return EARLIEST
        return LATEST


@contextlib.asynccontextmanager
async def times_as_text(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """`read_times_as_text` for as long as the block runs, on a pooled connection: its codec
    and session settings are put back after, for whoever takes it next."""
    await read_times_as_text(conn)
    try:
        yield conn
    finally:
        await conn.reset_type_codec("timestamptz", schema="pg_catalog")
        await conn.execute("RESET TimeZone; RESET DateStyle")
