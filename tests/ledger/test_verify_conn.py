"""A verification connection that reads times as text decodes every timestamptz to the datetime
asyncpg's binary decoder gives, whatever the session's zone was, and verification over it
finds exactly what it finds over a plain connection."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from app.core.timefmt import format_timestamp
from app.ledger.verify_conn import read_times_as_text
from tests.conftest import SealedFactory, with_database

FIRST = datetime(1, 1, 1, tzinfo=UTC)
LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def instants(count: int, seed: int = 7) -> list[datetime]:
    """Times over the whole range a datetime holds: each fraction's length (PostgreSQL drops
    trailing zeros), whole seconds, the epochs of Unix and PostgreSQL, and the ends."""
    rng = random.Random(seed)
    span = int((LAST - FIRST) / timedelta(microseconds=1))
    found = [FIRST, LAST, datetime(1970, 1, 1, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC)]
    for _ in range(count):
        moment = FIRST + timedelta(microseconds=rng.randrange(span))
        digits = rng.randrange(7)  # keep 0..6 significant digits of the fraction
        step = 10 ** (6 - digits)
        found.append(moment.replace(microsecond=moment.microsecond // step * step))
    return found


@pytest.fixture
async def plain_and_text(database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, ...]]:
    plain = await asyncpg.connect(database_url)
    # A session in another zone with another date style: the setup puts both back.
    text = await asyncpg.connect(
        database_url, server_settings={"TimeZone": "Asia/Kolkata", "DateStyle": "SQL, DMY"}
    )
    await read_times_as_text(text)
    yield plain, text
    await plain.close()
    await text.close()


SELECT_TIMES = "SELECT unnest($1::text[])::timestamptz AS t"


async def test_text_times_decode_as_the_binary_ones(
    plain_and_text: tuple[asyncpg.Connection, ...],
) -> None:
    plain, text = plain_and_text
    literals = [format_timestamp(moment) for moment in instants(3000)]
    binary = [r["t"] for r in await plain.fetch(SELECT_TIMES, literals)]
    decoded = [r["t"] for r in await text.fetch(SELECT_TIMES, literals)]
    assert decoded == binary
    assert all(moment.tzinfo is UTC for moment in decoded)
    assert [format_timestamp(m) for m in decoded] == literals


async def test_time_parameters_are_sent_as_utc_and_naive_ones_refused(
    plain_and_text: tuple[asyncpg.Connection, ...],
) -> None:
    plain, text = plain_and_text
    moment = datetime(2026, 3, 29, 1, 30, 0, 250, tzinfo=timezone(timedelta(hours=-5)))
    for conn in (plain, text):
        assert await conn.fetchval("SELECT $1::timestamptz", moment) == moment
    with pytest.raises(asyncpg.DataError, match="UTC offset"):
        await text.fetchval("SELECT $1::timestamptz", datetime(2026, 3, 29))


async def test_verification_over_text_times_finds_the_same(
    sealed_factory: SealedFactory, database_url: str
) -> None:
    sealed = await sealed_factory([4, 3])
    rows = await sealed.rows(1)
    await sealed.conn.execute(
        'UPDATE audit_log SET "timestamp" = "timestamp" + interval \'1 microsecond\' '
        "WHERE event_id = $1",
        rows[1]["event_id"],
    )
    await sealed.conn.execute(
        "UPDATE audit_log SET received_at = received_at - interval '1 hour' WHERE event_id = $1",
        (await sealed.rows(2))[0]["event_id"],
    )
    name = await sealed.conn.fetchval("SELECT current_database()")
    text = await asyncpg.connect(with_database(database_url, name))
    try:
        await read_times_as_text(text)
        plain_report = await sealed.verify()
        sealed.conn, plain = text, sealed.conn
        text_report = await sealed.verify()
        sealed.conn = plain
    finally:
        await text.close()
    assert [(f.check, f.seq, f.event_id) for f in plain_report.findings] == [
        ("event_hash_mismatch", 1, str(rows[1]["event_id"])),
        ("event_hash_mismatch", 2, str((await sealed.rows(2))[0]["event_id"])),
    ]
    assert text_report.findings == plain_report.findings
    assert (text_report.entries, text_report.events) == (plain_report.entries, plain_report.events)
