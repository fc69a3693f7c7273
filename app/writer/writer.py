"""The batch writer: read -> hash/sign -> seal (insert + ledger entry) -> commit -> ack.

Each writer task is one consumer of the group. A batch closes at `batch_size` events or
`batch_max_wait_ms` after its first entry. Its new events are sealed in one transaction
(app.ledger.seal); events already stored (a redelivery, a client's resend) are left out, so each is
stored once. Entries are acked only after the commit. A batch that fails on its data is split
until the poison events are isolated; those go to the dead-letter stream, the rest are stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Sequence

import asyncpg
from redis.exceptions import ResponseError

from app.core.config import Settings
from app.core.db import connect_raw
from app.core.metrics import Metrics
from app.core.service_macs import ServiceMacs
from app.core.timefmt import parse_timestamp
from app.ledger.seal import seal_batch, stored_contents
from app.ledger.signing import PublicSigner
from app.queue.shards import ShardedStream
from app.queue.stream import Entry, EventStream, Priority
from app.writer.batch import (
    CONFLICT,
    BatchPlan,
    PendingRow,
    chunk_entries,
    describe_error,
    first_of_each,
    is_poison,
    plan_batch,
)

log = logging.getLogger(__name__)

DEDUPE_ROUNDS = 5

MAX_READ_COUNT = 256

MIN_BLOCK_MS = 50  # a writer serving several shards blocks at least this long on each


class PoisonData(Exception):
    """The database refused the rows themselves; retrying the same rows cannot succeed."""


class CircuitBreaker:
    """Opens after `threshold` consecutive failed writes; writers do not read while it is open."""

    def __init__(self, threshold: int, metrics: Metrics) -> None:
        self.threshold = threshold
        self.failures = 0
        self._closed = asyncio.Event()
        self._closed.set()
        self._metrics = metrics

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    def record_success(self) -> None:
        self.failures = 0
        if self.is_open:
            log.info("circuit closed: database writes succeed again")
        self._closed.set()
        self._metrics.circuit_open.set(0)

    def record_failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold and not self.is_open:
            log.warning("circuit open after %d failed writes; reading paused", self.failures)
            self._closed.clear()
            self._metrics.circuit_open.set(1)

    async def wait_closed(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closed.wait(), seconds)
        except TimeoutError:
            pass  # let this writer probe the database with a new batch


def backoff_seconds(attempt: int, base_ms: int, cap_ms: int) -> float:
    """Exponential backoff with jitter: a random point in the upper half of the window."""
    window: float = min(cap_ms, base_ms * 2 ** min(attempt, 30)) / 1000
    return window * random.uniform(0.5, 1.0)


def consumer_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}:{secrets.token_hex(3)}"


class BatchWriter:
    """One consumer of the group. It serves the shards the roster gives it (app.queue.shards), one
    read-and-write round per shard in turn, and macs each shard's batches into that shard's
    chain."""

    def __init__(
        self,
        settings: Settings,
        streams: ShardedStream,
        metrics: Metrics,
        breaker: CircuitBreaker,
        name: str,
    ) -> None:
        self.settings = settings
        self.streams = streams
        self.metrics = metrics
        self.breaker = breaker
        self.name = name
        self._conn: asyncpg.Connection | None = None
        self._claim_cursors: dict[int, dict[Priority, str]] = {}
        self._next_claim: dict[int, float] = {}
        self._next_beat = 0.0
        self._shards: list[int] = []
        self._served: set[int] = set()
        self._events_per_entry = 1.0
        self._public_signer = (
            PublicSigner(settings.ledger_private_key) if settings.ledger_private_key else None
        )
        self.macs = ServiceMacs.of(settings.service_key_ring)

    # -- loop -------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        attempt = 0
        while not stopping.is_set():
            try:
                await self.cycle(stopping)
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                self.metrics.writer_errors.labels(stage="cycle").inc()
                log.warning("writer %s cycle failed: %s", self.name, type(exc).__name__)
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    await self._recreate_group()
                await asyncio.sleep(
                    backoff_seconds(
                        attempt, self.settings.retry_base_ms, self.settings.retry_max_ms
                    )
                )
        await self.close()

    async def cycle(self, stopping: asyncio.Event) -> int:
        """One read-and-write round on each shard this writer serves; returns entries handled."""
        if self.breaker.is_open:  # the database is down: neither read nor reclaim
            await self.breaker.wait_closed(self.settings.retry_max_ms / 1000)
        beat = time.monotonic() >= self._next_beat
        if beat or not self._shards:
            self._shards = await self.streams.roster(self.name)
            self._served.update(self._shards)
        if not self._shards:  # more writers than the roster shows yet: wait for the next beat
            await asyncio.sleep(self.settings.read_block_ms / 1000)
            self._next_beat = 0.0
            return 0
        block_ms = max(MIN_BLOCK_MS, self.settings.read_block_ms // len(self._shards))
        handled = 0
        for shard in self._shards:
            stream = self.streams.shards[shard]
            handled += await self.cycle_shard(stream, stopping, block_ms)
            if beat:  # alive: a read of this shard just succeeded
                await stream.beat(self.name)
        if beat:
            self._next_beat = time.monotonic() + 1.0
        return handled

    async def cycle_shard(self, stream: EventStream, stopping: asyncio.Event, block_ms: int) -> int:
        """Reclaim idle entries when due, else read one batch; write it. Returns entries."""
        now = time.monotonic()
        shard = stream.shard
        if now >= self._next_claim.get(shard, 0.0) and not self.breaker.is_open:
            self._next_claim[shard] = now + self.settings.claim_interval_ms / 1000
            cursors = self._claim_cursors.setdefault(shard, {"high": "0-0", "normal": "0-0"})
            claimed = await stream.claim(
                self.name, self.settings.claim_idle_ms, cursors, MAX_READ_COUNT
            )
            if claimed:
                log.info("writer %s reclaimed %d idle entries", self.name, len(claimed))
                await self.write_claimed(stream, claimed, stopping)
                return len(claimed)
        entries = await self.collect(stream, stopping, block_ms)
        for chunk in chunk_entries(entries, self.settings.batch_size):
            await self.write(stream, chunk, stopping)
        return len(entries)

    async def write_claimed(
        self, stream: EventStream, entries: Sequence[Entry], stopping: asyncio.Event
    ) -> None:
        """Reclaimed entries in batches of the usual size; one delivered more than
        `max_deliveries` times is written alone, so it cannot hold back its batch-mates again."""
        again = [e for e in entries if e.deliveries > self.settings.max_deliveries]
        usual = [e for e in entries if e.deliveries <= self.settings.max_deliveries]
        for chunk in chunk_entries(usual, self.settings.batch_size):
            await self.write(stream, chunk, stopping)
        for entry in again:
            log.warning(
                "writer %s writes entry %s alone after %d deliveries",
                self.name,
                entry.entry_id,
                entry.deliveries,
            )
            await self.write(stream, [entry], stopping)

    async def collect(
        self, stream: EventStream, stopping: asyncio.Event, block_ms: int | None = None
    ) -> list[Entry]:
        """Entries for one batch: closed by size, or by the wait after its first entry."""
        first_block = self.settings.read_block_ms if block_ms is None else block_ms
        entries = await self._read(stream, self.settings.batch_size, first_block)
        if not entries:
            return entries
        events = sum(e.events for e in entries)
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000
        while events < self.settings.batch_size and not stopping.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            more = await self._read(stream, self.settings.batch_size - events, remaining_ms)
            entries += more
            events += sum(e.events for e in more)
        return entries

    async def _read(self, stream: EventStream, wanted_events: int, block_ms: int) -> list[Entry]:
        count = max(1, min(MAX_READ_COUNT, round(wanted_events / self._events_per_entry)))
        entries = await stream.read(self.name, count, block_ms)
        if entries:
            self._events_per_entry = max(1.0, sum(e.events for e in entries) / len(entries))
        return entries

    # -- one batch ----------------------------------------------------------------------------

    async def write(
        self, stream: EventStream, entries: Sequence[Entry], stopping: asyncio.Event
    ) -> int:
        """Persist what the entries carry into the shard's chain, then settle them in Redis.
        Returns rows inserted."""
        started = time.perf_counter()
        plan = plan_batch(entries, self.settings.signing_key_ring[0], self.macs, chain=stream.shard)
        inserted = await self._store_isolating(plan, plan.rows, stopping)
        await stream.settle(plan.settlements())
        self._observe(plan, inserted, time.perf_counter() - started)
        return inserted

    def _observe(self, plan: BatchPlan, inserted: int, seconds: float) -> None:
        m = self.metrics
        m.persisted.inc(inserted)
        m.batch_size.observe(len(plan.rows))
        m.batch_write_seconds.observe(seconds)
        dead = plan.dead_items
        if dead:
            m.dead_lettered.inc(dead)
            log.warning("writer %s dead-lettered %d items", self.name, dead)
        now = time.time()
        seen: set[int] = set()
        for row in plan.rows:
            if row.entry_index not in seen:
                seen.add(row.entry_index)
                received = parse_timestamp(row.record["received_at"]).timestamp()
                m.ingest_to_persist_seconds.observe(max(0.0, now - received))

    async def _store_isolating(
        self, plan: BatchPlan, rows: list[PendingRow], stopping: asyncio.Event
    ) -> int:
        """Insert rows; on poison data split the rows until each bad one stands alone."""
        if not rows:
            return 0
        try:
            return await self._store(plan, rows, stopping)
        except PoisonData as exc:
            if len(rows) == 1:
                plan.kill_row(rows[0], str(exc))
                return 0
        middle = len(rows) // 2
        first = await self._store_isolating(plan, rows[:middle], stopping)
        return first + await self._store_isolating(plan, rows[middle:], stopping)

    async def _store(
        self, plan: BatchPlan, rows: Sequence[PendingRow], stopping: asyncio.Event
    ) -> int:
        """One transaction; retried with backoff while the database is unreachable."""
        attempt = 0
        while True:
            try:
                inserted = await self._insert(plan, rows)
            except Exception as exc:
                if is_poison(exc):
                    self.breaker.record_success()
                    raise PoisonData(describe_error(exc)) from exc
                attempt += 1
                self.breaker.record_failure()
                self.metrics.writer_errors.labels(stage="insert").inc()
                log.warning(
                    "writer %s insert failed (%s), attempt %d",
                    self.name,
                    type(exc).__name__,
                    attempt,
                )
                await self._drop_connection()
                await asyncio.sleep(
                    backoff_seconds(
                        attempt, self.settings.retry_base_ms, self.settings.retry_max_ms
                    )
                )
                continue
            self.breaker.record_success()
            return inserted

    async def _insert(self, plan: BatchPlan, rows: Sequence[PendingRow]) -> int:
        """Seal the rows not stored yet; returns how many were inserted."""
        conn = await self._connection()
        fresh = first_of_each(plan, rows)
        key = self.settings.ledger_key_ring[0]
        for _ in range(DEDUPE_ROUNDS):
            if not fresh:
                return 0
            try:
                batch = [r.row for r in fresh]
                sealed = await seal_batch(conn, batch, key, self._public_signer, plan.chain)
                self.metrics.ledger_head_seq.labels(chain=str(sealed.chain)).set(sealed.seq)
                return sealed.count
            except asyncpg.UniqueViolationError:
                # Stored meanwhile (a redelivery raced us): leave those out, flag conflicts.
                stored = await stored_contents(conn, [r.key for r in fresh])
                for row in fresh:
                    if row.key in stored and stored[row.key] != row.content:
                        plan.kill_row(row, CONFLICT)
                fresh = [r for r in fresh if r.key not in stored]
        raise RuntimeError("events kept colliding with concurrent inserts")

    async def _recreate_group(self) -> None:
        """The stream lost its group (Redis lost its data): create it again."""
        try:
            await self.streams.ensure_group()
            log.warning("writer %s recreated the consumer group", self.name)
        except Exception as exc:
            log.warning("writer %s could not recreate the group: %s", self.name, type(exc).__name__)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect_raw(self.settings)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        await self._drop_connection()
        try:
            for shard in sorted(self._served):
                await self.streams.shards[shard].remove_consumer(self.name)
            await self.streams.leave_roster(self.name)
        except Exception as exc:
            log.warning("writer %s could not leave the group: %s", self.name, type(exc).__name__)
