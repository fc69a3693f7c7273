"""The storage limit: the writer's own batch write, straight into a scratch database, with no
HTTP and no Redis in the way. Each batch is app.writer.batch.record_row per event (hash, HMAC)
and app.ledger.seal.seal_batch (COPY with batch id and leaf index, Merkle root, chain lock, ledger
entry, signatures), on 1 and 2 concurrent connections as writer tasks share one worker process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.core.timefmt import format_timestamp
from app.events.ids import new_event_ids
from app.events.model import EVENT_LIST
from app.events.record import EventRecord
from app.ledger.seal import seal_batch
from app.writer.batch import record_row
from loadtests.bench import procstat
from loadtests.bench.payloads import BodyPool
from loadtests.bench.progress import say
from loadtests.seal_overhead import KEY

Record = EventRecord
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class StorageResult:
    connections: int
    rows: int
    # Rows built beforehand: what the database takes (COPY, seal, commit) per second.
    sealed_rows_per_s: float
    # record_row in the timed loop too, as a writer does per batch: one worker process's limit.
    writer_rows_per_s: float
    # CPU per row, sealed path: the connections' PostgreSQL backends (WAL writer and checkpointer
    # not counted); writer path: this process (record_row, COPY encoding, the Merkle root).
    database_us_per_row: float | None
    writer_us_per_row: float


class QueuedRecords:
    """Records as the API queues them for the bulk phase's requests: the bulk pool's bodies
    (loadtests.bench.payloads), each completed with its times as it is taken, validated and made
    records with their own event ids, so the database gets the rows it gets through the service
    (the same spread of patients, principals and correlation ids: index upkeep, the main cost
    per row, depends on it)."""

    def __init__(self, pool: BodyPool) -> None:
        self.bodies = pool.writer(seed=0)

    def take(self, count: int) -> list[Record]:
        records: list[Record] = []
        while len(records) < count:
            events = EVENT_LIST.validate_json(self.bodies.next_body(), strict=True)
            received = format_timestamp(datetime.now(UTC))
            ids = iter(new_event_ids(len(events)))
            records += [event.to_record("bench", received, next(ids)) for event in events]
        return records[:count]


async def _seal_rows(conn: asyncpg.Connection, batches: Sequence[list[Row]]) -> None:
    for rows in batches:
        await seal_batch(conn, rows, KEY, None)


async def _write_records(conn: asyncpg.Connection, batches: Sequence[list[Record]]) -> None:
    for records in batches:
        await seal_batch(conn, [record_row(r, KEY) for r in records], KEY, None)


@dataclass(frozen=True, slots=True)
class Timed:
    rows_per_s: float
    database_cpu_s: float | None  # the backends' CPU seconds in the timed part
    own_cpu_s: float  # this process's


async def _timed(
    conns: Sequence[asyncpg.Connection],
    batches: int,
    batch_size: int,
    source: QueuedRecords,
    prebuilt: bool,
) -> Timed:
    """`batches` batches on each connection at once: rows/s and CPU spent."""
    backends = [conn.get_server_pid() for conn in conns]
    work = [[source.take(batch_size) for _ in range(batches)] for _ in conns]
    if prebuilt:  # the rows built before the clock starts
        rows = [[[record_row(r, KEY) for r in batch] for batch in part] for part in work]
        runs = [_seal_rows(conn, part) for conn, part in zip(conns, rows, strict=True)]
    else:
        runs = [_write_records(conn, part) for conn, part in zip(conns, work, strict=True)]
    database_before = procstat.cpu_seconds(backends)
    own_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*runs)
    seconds = time.perf_counter() - started
    own = time.process_time() - own_before
    database_after = procstat.cpu_seconds(backends)
    database = None
    if database_before.keys() == database_after.keys() == set(backends):  # readable (Linux)
        database = sum(database_after.values()) - sum(database_before.values())
    return Timed(len(conns) * batches * batch_size / seconds, database, own)


async def measure_storage(
    url: str,
    batches: int,
    batch_size: int,
    pool: BodyPool,
    connection_counts: Sequence[int] = (1, 2),
) -> list[StorageResult]:
    """In the (scratch, migrated) database at `url`, with the bulk phase's events (`pool`)."""
    source = QueuedRecords(pool)
    conns = [await asyncpg.connect(url) for _ in range(max(connection_counts))]
    try:
        await _timed(conns[:1], 1, batch_size, source, prebuilt=True)  # warm-up: caches, plans
        results = []
        for count in connection_counts:
            sealed = await _timed(conns[:count], batches, batch_size, source, prebuilt=True)
            writer = await _timed(conns[:count], batches, batch_size, source, prebuilt=False)
            rows = count * batches * batch_size
            database_us = None
            if sealed.database_cpu_s is not None:
                database_us = round(sealed.database_cpu_s / rows * 1e6, 1)
            writer_us = round(writer.own_cpu_s / rows * 1e6, 1)
            results.append(
                StorageResult(
                    count, rows, sealed.rows_per_s, writer.rows_per_s, database_us, writer_us
                )
            )
            say(
                f"storage: {count} connection(s): sealed {sealed.rows_per_s:,.0f} rows/s "
                f"(database {database_us} us CPU a row), writer path "
                f"{writer.rows_per_s:,.0f} rows/s (writer {writer_us} us CPU a row)",
            )
        return results
    finally:
        for conn in conns:
            await conn.close()
