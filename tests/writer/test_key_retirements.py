"""Writer processes record each retired key in every chain's log once (app.writer.retirements)."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from app.core.config import Settings, SigningKey
from app.core.timefmt import format_timestamp
from app.ledger.rotation import RETIREMENT_ACTION
from app.ledger.verify import Verifier, verify_chains
from app.store.models import AUDIT_COLUMNS
from app.writer.group import WriterGroup
from app.writer.retirements import RETIREMENT_LOCK, RetirementRecorder
from tests.conftest import Sealed, SealedFactory

OPERATIONS = "_service"


def ring(active: str, byte: bytes, old: SigningKey, retired_at: datetime) -> str:
    secret = base64.b64encode(old.secret).decode()
    fresh = base64.b64encode(byte * 32).decode()
    return f"{active}:{fresh},{old.key_id}:{secret}@{format_timestamp(retired_at)}"


def rotated(sealed: Sealed, events_at: datetime, ledger_at: datetime) -> Settings:
    settings = sealed.res.settings
    changed = settings.model_copy(
        update={
            "signing_keys": ring("test-2", b"n", settings.signing_key_ring[0], events_at),
            "ledger_keys": ring("ledger-2", b"m", settings.ledger_key_ring[0], ledger_at),
        }
    )
    for name in ("signing_key_ring", "ledger_key_ring"):
        changed.__dict__.pop(name, None)
    return changed


async def retirements(conn: asyncpg.Connection) -> list[tuple[int, int, str, str, str, str]]:
    """(chain, seq, ring, key retired, event key, ledger key) of each retirement in the log."""
    rows = await conn.fetch(
        """SELECT l.chain, l.seq, a.details, a.key_id, l.key_id AS ledger_key_id
           FROM audit_log a JOIN audit_ledger l USING (batch_id)
           WHERE a.action = $1 AND a.organization_id = $2 ORDER BY l.chain, l.seq, a.leaf_index""",
        RETIREMENT_ACTION,
        OPERATIONS,
    )
    found = []
    for r in rows:
        details = orjson.loads(r["details"])
        found.append(
            (
                r["chain"],
                r["seq"],
                details["ring"],
                details["key_id"],
                r["key_id"],
                r["ledger_key_id"],
            )
        )
    return found


async def test_a_writer_process_starting_records_each_retired_key_in_every_chain_once(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([2], stream_shards=2)  # chain 1 has no entries yet
    first = await sealed.conn.fetchval("SELECT sealed_at FROM audit_ledger")
    events_at, ledger_at = first + timedelta(milliseconds=1), first + timedelta(milliseconds=2)
    await asyncio.sleep(0.01)  # both passed
    settings = rotated(sealed, events_at, ledger_at)
    res = sealed.res
    for _ in range(2):  # the second start finds them recorded
        group = WriterGroup(settings, res.engine, res.stream, res.metrics)
        group.start()
        await group.stop()
    expected = [
        (chain, seq, ring, key, "test-2", "ledger-2")
        for chain, seq in ((0, 2), (1, 1))
        for ring, key in (("events", "test-1"), ("ledger", "ledger-1"))
    ]
    assert await retirements(sealed.conn) == expected
    row = await sealed.conn.fetchrow(
        "SELECT * FROM audit_log WHERE action = $1 ORDER BY leaf_index LIMIT 1", RETIREMENT_ACTION
    )
    assert orjson.loads(row["details"]) == {
        "ring": "events",
        "key_id": "test-1",
        "retired_at": format_timestamp(events_at),
    }
    assert (row["principal_id"], row["principal_type"], row["status"]) == (
        "key-rotation",
        "service",
        "success",
    )
    verifier = Verifier(settings.signing_keys_by_id, ledger_keys=settings.ledger_keys_by_id)
    report = await verify_chains(sealed.conn, verifier)
    assert report.intact, list(report.findings)
    assert [c["ledger_entries"] for c in report.chains] == [2, 1]


async def test_a_retirement_is_recorded_by_the_check_after_it_passes(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([1])
    now = datetime.now(UTC)
    settings = rotated(sealed, now + timedelta(hours=1), now + timedelta(days=1))
    recorder = RetirementRecorder(settings)
    assert await recorder.check(now) == []  # nothing due: not even a connection
    [events] = await recorder.check(now + timedelta(hours=2))
    assert (events.chain, events.seq, events.count) == (0, 2, 1)
    assert await recorder.check(now + timedelta(hours=3)) == []  # known to be recorded
    [ledger] = await recorder.check(now + timedelta(days=2))
    assert (ledger.seq, ledger.count) == (3, 1)
    assert [r[:4] for r in await retirements(sealed.conn)] == [
        (0, 2, "events", "test-1"),
        (0, 3, "ledger", "ledger-1"),
    ]
    # Nothing due, so nothing is asked of the database (here, one that is not there).
    nowhere = settings.model_copy(update={"database_url": "postgresql://root@127.0.0.1:1/none"})
    assert await RetirementRecorder(nowhere).check(now) == []


async def test_one_writer_process_at_a_time_records(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([1])
    now = datetime.now(UTC)
    settings = rotated(sealed, now - timedelta(minutes=1), now + timedelta(days=1))
    leader = await asyncpg.connect(settings.database_url)
    try:
        async with leader.transaction():
            await leader.execute("SELECT pg_advisory_xact_lock($1)", RETIREMENT_LOCK)
            assert await RetirementRecorder(settings).check() == []  # another is recording
        [sealed_batch] = await RetirementRecorder(settings).check()
    finally:
        await leader.close()
    assert sealed_batch.count == 1
    assert await RetirementRecorder(settings).check() == []  # a new process sees it recorded


async def test_a_row_inserted_around_the_writers_does_not_stand_for_a_retirement(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([1])
    now = datetime.now(UTC)
    settings = rotated(sealed, now - timedelta(minutes=1), now + timedelta(days=1))
    # A copy of the first event, made to claim the retirement, its signature left as it was.
    columns = ", ".join(f'"{c}"' for c in AUDIT_COLUMNS)
    await sealed.conn.execute(
        f"""INSERT INTO audit_log ({columns})
           SELECT event_id, "timestamp" + interval '1 second', $1, received_at, $2, status,
                  principal_id, principal_type, target_resource_type, target_resource_id,
                  patient_id, data_classification, purpose_of_use, break_glass,
                  outcome_description, correlation_id, session_id, ip_address, user_agent,
                  $3::json, priority, api_key_id, hash, signature, 'test-2', batch_id, leaf_index
           FROM audit_log LIMIT 1""",
        OPERATIONS,
        RETIREMENT_ACTION,
        '{"ring": "events", "key_id": "test-1"}',
    )
    [recorded] = await RetirementRecorder(settings).check()
    assert recorded.seq == 2
