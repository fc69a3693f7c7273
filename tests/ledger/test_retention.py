"""partitions prune: whole months past retention go, the ledger stays, verification stays green
and names the pruned ranges; tampering is still found."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from app.cli.partitions import prune
from app.core.config import parse_retention
from app.events.model import EVENT_LIST
from app.events.record import EventRecord
from app.ledger.merkle import leaf_hash
from app.ledger.proofs import event_proof
from app.ledger.prune import PruneRefused, cutoff
from app.ledger.tlog import root_from_inclusion_proof
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import Sealed, SealedFactory, event

OLD = "audit_log_y2011m03"
RECENT = "2026-11-20T10:00:00+00:00"


def old(minute: int) -> str:
    return f"2011-03-10T08:{minute:02d}:00+00:00"


async def seal_batches(sealed: Sealed, batches: list[list[str]]) -> list[list[EventRecord]]:
    """One ledger entry per list of timestamps; returns the records sealed."""
    res = sealed.res
    writer = BatchWriter(res.settings, res.stream, res.metrics, CircuitBreaker(3, res.metrics), "t")
    sealed_records = []
    for n, times in enumerate(batches):
        events = EVENT_LIST.validate_json(
            orjson.dumps(
                [event(timestamp=t, principal_id=f"u{n}-{i}") for i, t in enumerate(times)]
            )
        )
        records = [e.to_record(sealed.org, "2026-11-20T10:00:01.000000Z") for e in events]
        await res.stream.enqueue(records, 10_000)
        assert await writer.cycle(asyncio.Event()) == 1
        sealed_records.append(records)
    await writer.close()
    return sealed_records


async def with_old_month(
    sealed_factory: SealedFactory,
) -> tuple[Sealed, list[list[EventRecord]]]:
    sealed = await sealed_factory([])
    await sealed.conn.execute(
        f"CREATE TABLE {OLD} PARTITION OF audit_log "
        "FOR VALUES FROM ('2011-03-01 00:00+00') TO ('2011-04-01 00:00+00')"
    )
    batches = [
        [old(1), old(2), old(3)],  # wholly in the old month
        [old(4), RECENT, old(5), RECENT],  # across the boundary of what is kept
        [RECENT, RECENT],
    ]
    return sealed, await seal_batches(sealed, batches)


def test_retention_periods_parse_and_cut_off() -> None:
    assert parse_retention("6y") == 72 and parse_retention("18m") == 18
    for bad in ("6", "0y", "6w", "-1y", ""):
        with pytest.raises(ValueError):
            parse_retention(bad)
    now = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)
    assert cutoff(72, now) == datetime(2020, 11, 27, 13, 0, tzinfo=UTC)
    assert cutoff(1, datetime(2026, 3, 31, tzinfo=UTC)) == datetime(2026, 2, 28, tzinfo=UTC)


async def test_prune_drops_old_months_and_verification_reports_them(
    sealed_factory: SealedFactory,
) -> None:
    sealed, records = await with_old_month(sealed_factory)
    settings = sealed.res.settings
    dry = await prune(settings, "6y", dry_run=True)
    assert (dry["partitions"], dry["events"]) == (1, 5)
    assert await sealed.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", OLD)

    done = await prune(settings, "6y", dry_run=False)
    assert (done["partitions"], done["events"]) == (1, 5)
    assert not await sealed.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", OLD)
    assert await sealed.conn.fetchval("SELECT count(*) FROM audit_log") == 4
    assert await sealed.conn.fetchval("SELECT count(*) FROM audit_ledger") == 3

    report = await sealed.verify()
    assert report.intact, report.findings
    assert report.pruned_events == 5 and report.events == 4
    summary = report.summary()
    assert [r["partition"] for r in summary["pruned_ranges"]] == [OLD]
    assert summary["pruned_ranges"][0]["events"] == 5

    # An event kept from the batch that lost half its leaves is still provable.
    kept = next(r for r in records[1] if r["timestamp"].startswith("2026"))
    proof = await event_proof(sealed.conn, sealed.org, uuid.UUID(kept["event_id"]))
    assert proof is not None and proof["tree_size"] == 4
    root = root_from_inclusion_proof(
        proof["leaf_index"],
        proof["tree_size"],
        leaf_hash(bytes.fromhex(proof["event_hash"])),
        [bytes.fromhex(h) for h in proof["audit_path"]],
    )
    assert root.hex() == proof["ledger_entry"]["merkle_root"]
    assert (await prune(settings, "6y", dry_run=False))["partitions"] == 0  # nothing left to do


async def test_pruning_masks_no_tampering(sealed_factory: SealedFactory) -> None:
    sealed, records = await with_old_month(sealed_factory)
    await prune(sealed.res.settings, "6y", dry_run=False)
    # A kept event deleted by the owner is still missing, prune or not.
    await sealed.conn.execute(
        "DELETE FROM audit_log WHERE event_id = $1", records[2][0]["event_id"]
    )
    # A pruned batch's record altered: its leaves count as deleted, the record as invalid.
    await sealed.conn.execute(
        "UPDATE audit_pruned_batches SET pruned_events = pruned_events + 1 "
        "WHERE batch_id = (SELECT batch_id FROM audit_ledger WHERE seq = 1)"
    )
    # A forged record of a prune claims a recent month.
    await sealed.conn.execute(
        "INSERT INTO audit_prunes (partition_name, range_start, range_end, event_count, "
        "batch_count, pruned_at, key_id, signature) VALUES ('audit_log_y2026m11', "
        "'2026-11-01', '2026-12-01', 2, 1, now(), 'test-1', '\\x00')"
    )
    report = await sealed.verify()
    checks = {(f.check, f.seq) for f in report.findings}
    assert ("event_missing", 3) in checks
    assert ("prune_record_invalid", 1) in checks and ("event_missing", 1) in checks
    assert ("prune_record_invalid", None) in checks
    assert [r.partition for r in report.pruned_ranges] == [OLD]


async def test_prune_refuses_a_partition_holding_unsealed_rows(
    sealed_factory: SealedFactory,
) -> None:
    sealed, _ = await with_old_month(sealed_factory)
    await sealed.conn.execute(
        "INSERT INTO audit_log SELECT gen_random_uuid(), timestamp, organization_id, received_at,"
        " action, status, principal_id, principal_type, target_resource_type, target_resource_id,"
        " patient_id, data_classification, purpose_of_use, break_glass, outcome_description,"
        " correlation_id, session_id, ip_address, user_agent, details, priority, hash, signature,"
        f" key_id, NULL, NULL FROM {OLD} LIMIT 1"
    )
    with pytest.raises(PruneRefused, match="no ledger entry"):
        await prune(sealed.res.settings, "6y", dry_run=False)
    assert await sealed.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", OLD)
