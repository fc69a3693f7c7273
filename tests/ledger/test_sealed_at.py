"""An entry's sealed_at is set under its chain's lock, committed by its head (v3) and never
decreases along the chain; verification names one that does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.core.config import SigningKey
from app.core.timefmt import format_timestamp
from app.events.model import EventIn
from app.ledger.chain import entry_head
from app.ledger.seal import seal_batch
from app.writer.batch import record_row
from tests.conftest import Sealed, SealedFactory
from tests.ledger.forge import append_forged_batch


def rows(key: SigningKey, count: int, at: datetime | None = None) -> list[tuple[Any, ...]]:
    moment = at or datetime.now(UTC)
    return [
        record_row(
            EventIn.model_validate(
                {"action": "fhir.patient.read", "status": "success", "principal_id": f"u{i}"}
            ).to_record("org-sealed", format_timestamp(moment)),
            key,
        )
        for i in range(count)
    ]


def keys(sealed: Sealed) -> tuple[SigningKey, SigningKey]:
    settings = sealed.res.settings
    return settings.signing_key_ring[0], settings.ledger_key_ring[0]


async def entries(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM audit_ledger WHERE chain = 0 ORDER BY seq"))


async def test_an_entry_is_never_sealed_before_the_one_it_follows(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([2])
    event_key, ledger_key = keys(sealed)
    other = await asyncpg.connect(sealed.res.settings.database_url)
    try:
        # A writer whose transaction began first takes the chain's lock after another writer's
        # batch committed: its entry follows that one and must not be sealed before it.
        async with sealed.conn.transaction():
            await sealed.conn.fetchval("SELECT now()")  # the transaction's time is fixed here
            await seal_batch(other, rows(event_key, 2), ledger_key, None)
            await seal_batch(sealed.conn, rows(event_key, 3), ledger_key, None)
    finally:
        await other.close()
    sealed_at = [e["sealed_at"] for e in await entries(sealed.conn)]
    assert sealed_at == sorted(sealed_at)
    for entry in await entries(sealed.conn):
        assert entry["head_version"] == 3
        assert entry_head(entry) == bytes(entry["head"])  # the head commits to sealed_at
    assert (await sealed.verify()).intact


async def test_sealed_at_never_goes_back_even_when_the_clock_does(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([2])
    event_key, ledger_key = keys(sealed)
    # The entry before was sealed by a clock an hour ahead (this changes its row, as its owner
    # can; its head no longer recomputes, which verification names).
    ahead = datetime.now(UTC) + timedelta(hours=1)
    await sealed.conn.execute("UPDATE audit_ledger SET sealed_at = $1 WHERE seq = 1", ahead)
    await seal_batch(sealed.conn, rows(event_key, 1), ledger_key, None)
    _, newest = await entries(sealed.conn)
    assert newest["sealed_at"] == ahead
    report = await sealed.verify()
    assert {(f.check, f.seq) for f in report.findings} == {("ledger_head_mismatch", 1)}


async def test_a_backdated_entry_is_named(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([2, 1])
    event_key, ledger_key = keys(sealed)
    _, before = await entries(sealed.conn)
    # Appended with the active keys, head and log correct, but sealed a minute before the entry
    # it follows.
    backdated = before["sealed_at"] - timedelta(minutes=1)
    seq = await append_forged_batch(
        sealed.conn, rows(event_key, 1, backdated), ledger_key, sealed_at=backdated
    )
    report = await sealed.verify()
    assert [(f.check, f.seq) for f in report.findings] == [("sealed_at_decreased", seq)]
    [finding] = report.findings
    assert finding.detail == (
        f"sealed at {format_timestamp(backdated)}, before seq 2 "
        f"({format_timestamp(before['sealed_at'])})"
    )
