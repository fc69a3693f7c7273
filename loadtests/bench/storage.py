"""The storage limit: the writer's own batch write, straight into a scratch database, with no
HTTP and no Redis in the way. Each batch is app.batch.record_row per event (hash, HMAC) and
app.ledger.seal_batch (COPY with batch id and leaf index, Merkle root, chain lock, ledger entry,
signatures), on 1 and 2 concurrent connections as writer tasks share one worker process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.batch import record_row
from app.ledger import seal_batch
from app.schemas import EventIn, new_event_id
from loadtests.bench.progress import say
from loadtests.seal_overhead import KEY

Record = dict[str, Any]
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class StorageResult:
    connections: int
    rows: int
    # Rows built beforehand: what the database takes (COPY, seal, commit) per second.
    sealed_rows_per_s: float
    # record_row in the timed loop too, as a writer does per batch: one worker process's limit.
    writer_rows_per_s: float


def queued_records(count: int, first: int) -> list[Record]:
    """Records as the API queues them (EventIn.to_record), each with its own event id."""
    received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    template = EventIn.model_validate(
        {
            "action": "fhir.patient.read",
            "status": "success",
            "principal_id": "u0",
            "principal_type": "practitioner",
            "target_resource_type": "Patient",
            "data_classification": "PHI",
            "purpose_of_use": "TREAT",
            "session_context": {"session_id": "s-1", "ip_address": "10.1.2.3"},
            "details": {"fields": ["name", "dob"]},
        }
    ).to_record("bench", received)
    return [
        dict(
            template,
            event_id=new_event_id(),
            principal_id=f"u{(first + i) % 500}",
            patient_id=f"p{(first + i) % 20_000}",
            target_resource_id=f"Patient/p{(first + i) % 20_000}",
        )
        for i in range(count)
    ]


async def _seal_rows(conn: asyncpg.Connection, batches: Sequence[list[Row]]) -> None:
    for rows in batches:
        await seal_batch(conn, rows, KEY, None)


async def _write_records(conn: asyncpg.Connection, batches: Sequence[list[Record]]) -> None:
    for records in batches:
        await seal_batch(conn, [record_row(r, KEY) for r in records], KEY, None)


async def _timed(
    conns: Sequence[asyncpg.Connection], batches: int, batch_size: int, prebuilt: bool
) -> float:
    """Rows per second of `batches` batches on each connection at once."""
    work = [
        [queued_records(batch_size, (c * batches + b) * batch_size) for b in range(batches)]
        for c in range(len(conns))
    ]
    if prebuilt:
        rows = [[[record_row(r, KEY) for r in batch] for batch in part] for part in work]
        started = time.perf_counter()
        await asyncio.gather(
            *(_seal_rows(conn, part) for conn, part in zip(conns, rows, strict=True))
        )
    else:
        started = time.perf_counter()
        await asyncio.gather(
            *(_write_records(conn, part) for conn, part in zip(conns, work, strict=True))
        )
    return len(conns) * batches * batch_size / (time.perf_counter() - started)


async def measure_storage(
    url: str, batches: int, batch_size: int, connection_counts: Sequence[int] = (1, 2)
) -> list[StorageResult]:
    """In the (scratch, migrated) database at `url`."""
    conns = [await asyncpg.connect(url) for _ in range(max(connection_counts))]
    try:
        await _timed(conns[:1], 1, batch_size, prebuilt=True)  # warm-up: caches, plans
        results = []
        for count in connection_counts:
            sealed = await _timed(conns[:count], batches, batch_size, prebuilt=True)
            writer = await _timed(conns[:count], batches, batch_size, prebuilt=False)
            rows = count * batches * batch_size
            results.append(StorageResult(count, rows, sealed, writer))
            say(
                f"storage: {count} connection(s): sealed {sealed:,.0f} rows/s, "
                f"writer path {writer:,.0f} rows/s",
            )
        return results
    finally:
        for conn in conns:
            await conn.close()
