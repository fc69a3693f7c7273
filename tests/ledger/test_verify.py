"""The tamper matrix: each case seals real batches, shows verification passes, tampers as a
database superuser would, and shows verification names exactly that. Each case has its own
database, since tampering breaks the chain for everything after it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from app.core.config import SigningKey
from app.ledger.hashing import canonical_bytes, record_from_row, sign_hash
from app.ledger.parallel_verify import split, verify_whole_chain
from app.ledger.proofs import DamagedBatch, event_proof
from app.ledger.sql import ROWS_OF_BATCHES
from app.ledger.verify import (
    Finding,
    Report,
    Verifier,
    fetch_by_batch,
    verify_range,
)
from app.store.partitions import summarize_batch_ranges
from app.writer import group as workers
from tests.conftest import Sealed, SealedFactory, eventually, seal


@pytest.fixture
async def sealed(sealed_factory: SealedFactory) -> Sealed:
    return await sealed_factory([3, 7, 2, 5])


def checks(report: Report) -> set[str]:
    return {f.check for f in report.findings}


async def test_untouched_chain_verifies(sealed: Sealed) -> None:
    report = await sealed.verify()
    assert report.intact, report.findings
    assert (report.entries, report.events) == (4, 17)
    partial = await sealed.verify(from_seq=2, to_seq=3)
    assert partial.intact and (partial.entries, partial.events) == (2, 9)


async def test_updated_field_is_named(sealed: Sealed) -> None:
    target = (await sealed.rows(2))[3]
    await sealed.conn.execute(
        "UPDATE audit_log SET patient_id = 'someone-else' WHERE event_id = $1", target["event_id"]
    )
    report = await sealed.verify()
    assert [(f.check, f.seq, f.event_id) for f in report.findings] == [
        ("event_hash_mismatch", 2, str(target["event_id"]))
    ]


async def test_updated_field_with_rehash_fails_the_signature(sealed: Sealed) -> None:
    target = (await sealed.rows(1))[0]
    changed = dict(target, action="fhir.patient.delete")
    digest = hashlib.sha256(canonical_bytes(record_from_row(changed))).digest()
    await sealed.conn.execute(
        "UPDATE audit_log SET action = 'fhir.patient.delete', hash = $2 WHERE event_id = $1",
        target["event_id"],
        digest,
    )
    found = checks(await sealed.verify())
    assert found == {"event_signature_invalid", "merkle_root_mismatch"}


async def test_deleted_event_is_named(sealed: Sealed) -> None:
    target = (await sealed.rows(3))[1]
    await sealed.conn.execute("DELETE FROM audit_log WHERE event_id = $1", target["event_id"])
    report = await sealed.verify()
    assert [(f.check, f.seq, f.detail) for f in report.findings] == [
        ("event_missing", 3, "leaf 1 of 2")
    ]


async def insert_forged(sealed: Sealed, **changes: object) -> uuid.UUID:
    """A new row made from a stored one, hashed correctly, signed with a guessed key."""
    source = dict((await sealed.rows(1))[0])
    forged_id = uuid.uuid4()
    forged = {**source, "event_id": forged_id, "principal_id": "intruder", **changes}
    digest = hashlib.sha256(canonical_bytes(record_from_row(forged))).digest()
    guessed = SigningKey("test-1", b"guessed-secret-guessed-secret!!")
    forged.update(hash=digest, signature=sign_hash(digest, guessed))
    columns = list(forged)
    placeholders = ", ".join(f"${i + 1}" for i in range(len(columns)))
    await sealed.conn.execute(
        f"INSERT INTO audit_log ({', '.join(columns)}) VALUES ({placeholders})",
        *forged.values(),
    )
    return forged_id


async def test_forged_row_with_guessed_key_is_named(sealed: Sealed) -> None:
    forged = await insert_forged(sealed, leaf_index=3)  # claims a fourth leaf of batch 1
    report = await sealed.verify()
    assert {(f.check, f.event_id) for f in report.findings} == {
        ("event_signature_invalid", str(forged)),
        ("event_unexpected", str(forged)),
    }


async def test_forged_row_outside_any_batch_is_named(sealed: Sealed) -> None:
    forged = await insert_forged(sealed, batch_id=None, leaf_index=None)
    report = await sealed.verify()
    assert ("event_unsealed", str(forged)) in {(f.check, f.event_id) for f in report.findings}
    unknown = await insert_forged(sealed, batch_id=10**9, leaf_index=0)
    again = await sealed.verify()
    assert ("event_unsealed", str(unknown)) in {(f.check, f.event_id) for f in again.findings}


async def test_swapped_leaf_indexes_are_named(sealed: Sealed) -> None:
    first, second = (await sealed.rows(2))[:2]
    await sealed.conn.execute(
        "UPDATE audit_log SET leaf_index = CASE event_id WHEN $1 THEN 1 ELSE 0 END "
        "WHERE event_id IN ($1, $2)",
        first["event_id"],
        second["event_id"],
    )
    report = await sealed.verify()
    assert [(f.check, f.seq) for f in report.findings] == [("merkle_root_mismatch", 2)]


async def test_event_moved_to_another_batch_is_named(sealed: Sealed) -> None:
    target = (await sealed.rows(2))[6]
    other = await sealed.conn.fetchval("SELECT batch_id FROM audit_ledger WHERE seq = 4")
    await sealed.conn.execute(
        "UPDATE audit_log SET batch_id = $2, leaf_index = 5 WHERE event_id = $1",
        target["event_id"],
        other,
    )
    report = await sealed.verify()
    assert {(f.check, f.seq) for f in report.findings} == {
        ("event_missing", 2),
        ("event_unexpected", 4),
    }


async def test_deleted_ledger_entry_is_named(sealed: Sealed) -> None:
    await sealed.conn.execute("DELETE FROM audit_ledger WHERE seq = 3")
    found = checks(await sealed.verify())
    assert {"ledger_entry_missing", "chain_link_broken", "event_unsealed"} == found


async def test_edited_root_is_named(sealed: Sealed) -> None:
    await sealed.conn.execute("UPDATE audit_ledger SET merkle_root = $1 WHERE seq = 2", bytes(32))
    report = await sealed.verify()
    assert {(f.check, f.seq) for f in report.findings} == {
        ("ledger_head_mismatch", 2),
        ("merkle_root_mismatch", 2),
    }


async def test_removed_signing_key_reports_unknown_key(sealed: Sealed) -> None:
    other = SigningKey("rotated", base64.b64decode(base64.b64encode(b"r" * 32)))
    report = await verify_range(
        sealed.conn, Verifier({"rotated": other}, ledger_keys={"rotated": other})
    )
    assert checks(report) == {"unknown_signing_key"}
    assert report.events == 17


async def test_rows_with_impossible_batch_ids_are_named(sealed: Sealed) -> None:
    zero = await insert_forged(sealed, batch_id=0, leaf_index=0)
    negative = await insert_forged(sealed, batch_id=-7, leaf_index=0)
    named = {(f.check, f.event_id) for f in (await sealed.verify()).findings}
    assert {("event_unsealed", str(zero)), ("event_unsealed", str(negative))} <= named


async def test_time_range_checks_the_whole_chain(sealed: Sealed) -> None:
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    assert (await verify_range(sealed.conn, sealed.verifier, times=(start, end))).intact
    outside = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 1, tzinfo=UTC))
    empty = await verify_range(sealed.conn, sealed.verifier, times=outside)
    assert empty.intact and empty.entries == 4 and empty.events == 0  # headers only
    # Re-date the newest entry out of the range: its head no longer recomputes.
    await sealed.conn.execute(
        "UPDATE audit_ledger SET first_timestamp = '2020-01-01', last_timestamp = '2020-01-01' "
        "WHERE seq = 4"
    )
    redated = await verify_range(sealed.conn, sealed.verifier, times=(start, end))
    assert ("ledger_head_mismatch", 4) in {(f.check, f.seq) for f in redated.findings}
    # Delete entries inside the chain: the gap is named, not skipped.
    await sealed.conn.execute("DELETE FROM audit_ledger WHERE seq IN (2, 3)")
    cut = await verify_range(sealed.conn, sealed.verifier, times=outside)
    assert ("ledger_entry_missing", 4) in {(f.check, f.seq) for f in cut.findings}


async def test_interleaved_batch_ids_verify_in_parts(sealed_factory: SealedFactory) -> None:
    """Batch ids come from a sequence at batch start, seqs at commit: they can interleave."""
    sealed = await sealed_factory([2])
    for next_id, size in ((20, 3), (10, 4), (30, 2)):
        await sealed.conn.execute("SELECT setval('audit_batch_id_seq', $1)", next_id)
        await seal(sealed.res, sealed.org, [size])
    full = await sealed.verify()
    assert full.intact and full.events == 11
    for first, last in ((1, 2), (2, 3), (3, 4), (2, 4)):
        part = await sealed.verify(first, last)
        assert part.intact, (first, last, part.findings[:3])
    assert (await sealed.verify(3, 4)).events == 6


async def test_a_forged_huge_event_count_is_reported_quickly(sealed: Sealed) -> None:
    await sealed.conn.execute("UPDATE audit_ledger SET event_count = 2000000000 WHERE seq = 2")
    report = await sealed.verify()
    missing = [f for f in report.findings if f.check == "event_missing"]
    assert missing == [Finding("event_missing", 2, None, "1999999993 of 2000000000 leaves absent")]


async def test_proof_of_a_damaged_batch_is_refused(sealed: Sealed) -> None:
    rows = await sealed.rows(2)
    await sealed.conn.execute("DELETE FROM audit_log WHERE event_id = $1", rows[0]["event_id"])
    with pytest.raises(DamagedBatch):
        await event_proof(sealed.conn, sealed.org, rows[-1]["event_id"])


async def test_whole_chain_in_parallel_parts_finds_the_same(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 5, 2, 4, 6, 1])
    settings = sealed.res.settings
    args = (sealed.conn, settings.asyncpg_dsn, sealed.verifier, 3)
    intact = await verify_whole_chain(*args, min_per_job=1)
    assert intact.intact and (intact.entries, intact.events) == (6, 21)
    target = (await sealed.rows(4))[2]
    await sealed.conn.execute(
        "UPDATE audit_log SET principal_id = 'x' WHERE event_id = $1", target["event_id"]
    )
    forged = await insert_forged(sealed, batch_id=None, leaf_index=None)
    broken = await verify_whole_chain(*args, min_per_job=1)
    assert {(f.check, f.event_id) for f in broken.findings} == {
        ("event_hash_mismatch", str(target["event_id"])),
        ("event_unsealed", str(forged)),
    }
    assert split(1, 10, 3, 1) == [(1, 4), (5, 8), (9, 10)]


async def _heap_blocks_read(sealed: Sealed, batch_id: int) -> int:
    """Heap pages the verifier's read of one batch visits; the read goes through the batch
    index (a sequential scan of a partition with rows would count as all of its pages)."""
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + ROWS_OF_BATCHES
    plan = (await fetch_by_batch(sealed.conn, explain, batch_id, batch_id))[0][0]

    def blocks(node: dict[str, Any]) -> int:
        if node["Node Type"] == "Seq Scan" and node["Actual Rows"] + node.get(
            "Rows Removed by Filter", 0
        ):
            return 1_000_000  # read the partition whole
        own = node.get("Exact Heap Blocks", 0) + node.get("Lossy Heap Blocks", 0)
        return int(own) + sum(blocks(child) for child in node.get("Plans", []))

    return blocks(orjson.loads(plan)[0]["Plan"])


async def _partition_pages(sealed: Sealed) -> float:
    size = await sealed.conn.fetchval(
        "SELECT sum(pg_relation_size(inhrelid)) / current_setting('block_size')::int "
        "FROM pg_inherits WHERE inhparent = 'audit_log'::regclass"
    )
    return float(size)


async def test_after_summarizing_a_batch_read_visits_its_own_pages(
    sealed_factory: SealedFactory,
) -> None:
    """Unsummarized ranges of the batch BRIN index match every batch: with autovacuum off or
    behind, each read of a verification pass would read all of them. verify (CLI and API) and
    the worker summarize new ranges first; afterwards one batch's read visits about its pages."""
    sealed = await sealed_factory([1_500, 1_500, 1_500, 1_500])
    pages = await _partition_pages(sealed)
    batch_id = await sealed.conn.fetchval("SELECT batch_id FROM audit_ledger WHERE seq = 2")
    assert await summarize_batch_ranges(sealed.conn) is not None
    assert await summarize_batch_ranges(sealed.conn) == 0  # nothing new since
    assert pages > 100
    assert await _heap_blocks_read(sealed, batch_id) < pages / 2
    assert len(await sealed.conn.fetch(ROWS_OF_BATCHES, batch_id, batch_id)) == 1_500
    assert (await sealed.verify()).intact


async def test_the_worker_summarizes_new_ranges_on_its_own(
    sealed_factory: SealedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = await sealed_factory([1_500, 1_500, 1_500, 1_500])
    pages = await _partition_pages(sealed)
    batch_id = await sealed.conn.fetchval("SELECT batch_id FROM audit_ledger WHERE seq = 2")
    monkeypatch.setattr(workers, "SUMMARIZE_INTERVAL_S", 0.05)
    res = sealed.res
    group = workers.WriterGroup(res.settings, res.engine, res.stream, res.metrics)
    upkeep = asyncio.create_task(group._summarize_upkeep())
    try:

        async def narrow() -> bool:
            return await _heap_blocks_read(sealed, batch_id) < pages / 2

        await eventually(narrow, within_s=10)
    finally:
        group.stopping.set()
        await asyncio.wait_for(upkeep, 5)


async def test_a_role_that_may_not_summarize_still_verifies(sealed: Sealed) -> None:
    role = f"audit_none_{uuid.uuid4().hex[:8]}"
    try:
        await sealed.conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("cannot create roles on this server")
    try:
        await sealed.conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        await sealed.conn.execute(f'SET ROLE "{role}"')
        assert await summarize_batch_ranges(sealed.conn) is None  # refused, not raised
        report = await sealed.verify()
        assert report.intact and report.events == 17
    finally:
        await sealed.conn.execute("RESET ROLE")
        await sealed.conn.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"')
        await sealed.conn.execute(f'DROP ROLE "{role}"')
