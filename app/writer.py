"""The batch writer: read -> hash/sign -> seal (insert + ledger entry) -> commit -> ack.

Each writer task is one consumer of the group. A batch closes at `batch_size` events or
`batch_max_wait_ms` after its first entry. Its new events are sealed in one transaction
(app.ledger); events already stored (a redelivery, a client's resend) are left out, so each is
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
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from app.config import Settings, SigningKey
from app.db import connect_raw
from app.integrity import event_hash, parse_timestamp, sign_hash
from app.ledger import BASE_COLUMNS, event_key, existing_keys, seal_batch, unique_rows
from app.metrics import Metrics
from app.signing import PublicSigner
from app.stream import DeadItem, Entry, EventStream, Priority, Settlement

log = logging.getLogger("app.writer")

DEDUPE_ROUNDS = 5
MAX_READ_COUNT = 256
POISON_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})  # data, integrity, program limit


class PoisonData(Exception):
    """The database refused the rows themselves; retrying the same rows cannot succeed."""


def is_poison(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in POISON_SQLSTATE_CLASSES
    # asyncpg's client-side encoding errors are ValueErrors.
    return isinstance(exc, ValueError | TypeError)


def record_row(record: dict[str, Any], key: SigningKey) -> tuple[Any, ...]:
    """The audit_log row for a canonical record (BASE_COLUMNS order), hashed and signed."""
    digest = event_hash(record)
    details = record["details"]
    values = dict(record)
    values["timestamp"] = parse_timestamp(record["timestamp"])
    values["received_at"] = parse_timestamp(record["received_at"])
    values["details"] = (
        None if details is None else orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()
    )
    values["hash"] = digest
    values["signature"] = sign_hash(digest, key)
    values["key_id"] = key.key_id
    return tuple(values[column] for column in BASE_COLUMNS)


@dataclass(slots=True)
class PendingRow:
    entry_index: int
    record: dict[str, Any]
    row: tuple[Any, ...]


@dataclass(slots=True)
class BatchPlan:
    """A batch's entries, the rows they carry, and what failed before reaching the database."""

    entries: Sequence[Entry]
    rows: list[PendingRow] = field(default_factory=list)
    dead: dict[int, list[DeadItem]] = field(default_factory=dict)

    def kill(self, entry_index: int, error: str, payload: bytes, events: int = 1) -> None:
        self.dead.setdefault(entry_index, []).append(DeadItem(error, payload, events))

    def settlements(self) -> list[Settlement]:
        return [
            Settlement(entry, tuple(self.dead.get(i, ()))) for i, entry in enumerate(self.entries)
        ]


def plan_batch(entries: Sequence[Entry], key: SigningKey, max_deliveries: int) -> BatchPlan:
    plan = BatchPlan(entries)
    for index, entry in enumerate(entries):
        if entry.deliveries > max_deliveries:
            plan.kill(index, f"delivered {entry.deliveries} times", entry.payload, entry.events)
            continue
        try:
            records = orjson.loads(entry.payload)
            if not isinstance(records, list):
                raise TypeError("entry payload is not a JSON array")
        except (orjson.JSONDecodeError, TypeError) as exc:
            plan.kill(index, f"unreadable entry: {exc}", entry.payload, entry.events)
            continue
        for record in records:
            try:
                plan.rows.append(PendingRow(index, record, record_row(record, key)))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                plan.kill(
                    index, f"invalid record: {type(exc).__name__}: {exc}", orjson.dumps(record)
                )
    return plan


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
    def __init__(
        self,
        settings: Settings,
        stream: EventStream,
        metrics: Metrics,
        breaker: CircuitBreaker,
        name: str,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.metrics = metrics
        self.breaker = breaker
        self.name = name
        self._conn: asyncpg.Connection | None = None
        self._claim_cursors: dict[Priority, str] = {"high": "0-0", "normal": "0-0"}
        self._next_claim = 0.0
        self._next_beat = 0.0
        self._events_per_entry = 1.0
        self._public_signer = (
            PublicSigner(settings.ledger_private_key) if settings.ledger_private_key else None
        )

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
                await asyncio.sleep(
                    backoff_seconds(
                        attempt, self.settings.retry_base_ms, self.settings.retry_max_ms
                    )
                )
        await self.close()

    async def cycle(self, stopping: asyncio.Event) -> int:
        """One read-and-write round; returns the number of entries handled."""
        now = time.monotonic()
        if now >= self._next_beat:
            await self.stream.beat(self.name)
            self._next_beat = now + 1.0
        if now >= self._next_claim:
            self._next_claim = now + self.settings.claim_interval_ms / 1000
            claimed = await self.stream.claim(
                self.name, self.settings.claim_idle_ms, self._claim_cursors, MAX_READ_COUNT
            )
            if claimed:
                log.info("writer %s reclaimed %d idle entries", self.name, len(claimed))
                await self.write(claimed, stopping)
                return len(claimed)
        if self.breaker.is_open:
            await self.breaker.wait_closed(self.settings.retry_max_ms / 1000)
        entries = await self.collect(stopping)
        if entries:
            await self.write(entries, stopping)
        return len(entries)

    async def collect(self, stopping: asyncio.Event) -> list[Entry]:
        """Entries for one batch: closed by size, or by the wait after its first entry."""
        entries = await self._read(self.settings.batch_size, self.settings.read_block_ms)
        if not entries:
            return entries
        events = sum(e.events for e in entries)
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000
        while events < self.settings.batch_size and not stopping.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            more = await self._read(self.settings.batch_size - events, remaining_ms)
            entries += more
            events += sum(e.events for e in more)
        return entries

    async def _read(self, wanted_events: int, block_ms: int) -> list[Entry]:
        count = max(1, min(MAX_READ_COUNT, round(wanted_events / self._events_per_entry)))
        entries = await self.stream.read(self.stream.client, self.name, count, block_ms)
        if entries:
            self._events_per_entry = max(1.0, sum(e.events for e in entries) / len(entries))
        return entries

    # -- one batch ----------------------------------------------------------------------------

    async def write(self, entries: Sequence[Entry], stopping: asyncio.Event) -> int:
        """Persist what the entries carry, then settle them in Redis. Returns rows inserted."""
        started = time.perf_counter()
        key = self.settings.signing_key_ring[0]
        plan = plan_batch(entries, key, self.settings.max_deliveries)
        inserted = await self._store_isolating(plan, plan.rows, stopping)
        await self.stream.settle(plan.settlements())
        self._observe(plan, inserted, time.perf_counter() - started)
        return inserted

    def _observe(self, plan: BatchPlan, inserted: int, seconds: float) -> None:
        m = self.metrics
        m.persisted.inc(inserted)
        m.batch_size.observe(len(plan.rows))
        m.batch_write_seconds.observe(seconds)
        dead = sum(len(items) for items in plan.dead.values())
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
            return await self._store(rows, stopping)
        except PoisonData as exc:
            if len(rows) == 1:
                row = rows[0]
                plan.kill(row.entry_index, str(exc), orjson.dumps(row.record))
                return 0
        middle = len(rows) // 2
        first = await self._store_isolating(plan, rows[:middle], stopping)
        return first + await self._store_isolating(plan, rows[middle:], stopping)

    async def _store(self, rows: Sequence[PendingRow], stopping: asyncio.Event) -> int:
        """One transaction; retried with backoff while the database is unreachable."""
        attempt = 0
        while True:
            try:
                inserted = await self._insert([r.row for r in rows])
            except Exception as exc:
                if is_poison(exc):
                    self.breaker.record_success()
                    raise PoisonData(f"{type(exc).__name__}: {exc}") from exc
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

    async def _insert(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Seal the rows not stored yet; returns how many were inserted."""
        conn = await self._connection()
        fresh = unique_rows(rows)
        key = self.settings.signing_key_ring[0]
        for _ in range(DEDUPE_ROUNDS):
            if not fresh:
                return 0
            try:
                return (await seal_batch(conn, fresh, key, self._public_signer)).count
            except asyncpg.UniqueViolationError:
                # Stored meanwhile (another writer had the same entry): leave those out.
                stored = await existing_keys(conn, fresh)
                fresh = [row for row in fresh if event_key(row) not in stored]
        raise RuntimeError("events kept colliding with concurrent inserts")

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
            await self.stream.remove_consumer(self.name)
        except Exception as exc:
            log.warning("writer %s could not leave the group: %s", self.name, type(exc).__name__)
