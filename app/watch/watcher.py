"""The watch as the writers run it (app.writer.group, AUDIT_WATCH_ENABLED): every
AUDIT_WATCH_INTERVAL_S, and at once while a chain has more to examine, a detector step on each
chain and then the outbox.

One writer process at a time does this: the one holding a session advisory lock on its own
connection (another takes over when that connection goes, reading back from audit_log the
recent past of each principal as it meets it). A failed round is counted
(audit_writer_errors_total{stage="watch"}), its connection dropped (and with it the lock and the
detector), and the next round starts from the progress stored: nothing of a step is kept unless
its transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from app.core.config import Settings
from app.core.db import connect_raw
from app.core.metrics import Metrics
from app.core.tasks import wait_or_stop
from app.ledger.seal import MAX_CHAINS
from app.queue.recorder import Recorder
from app.watch.detector import Detector
from app.watch.outbox import Outbox
from app.watch.sql import HIGHEST_CHAIN

log = logging.getLogger(__name__)

WATCH_LOCK = 0x617564697457  # pg_try_advisory_lock key ("auditW"): one detector at a time
SWEEP_S = 60.0  # how often windows idle past their length are let go
RETRY_MAX_S = 30.0
LOCK_RETRY_S = 2.0  # how often a process that does not hold the lock tries it


def described(exc: BaseException) -> str:
    """What went wrong, without values: PostgreSQL's messages can quote a row (PHI)."""
    if isinstance(exc, OSError | TimeoutError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}, sqlstate {exc.sqlstate}"
    return type(exc).__name__


class Watch:
    def __init__(self, settings: Settings, metrics: Metrics, recorder: Recorder | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.outbox = Outbox(recorder, metrics) if recorder is not None else None
        self.detector: Detector | None = None
        self._conn: asyncpg.Connection | None = None
        self._chains = settings.stream_shards
        self._swept = time.monotonic()
        self._tried = float("-inf")  # when the lock was last tried

    async def run(self, stopping: asyncio.Event) -> None:
        if self.outbox is None:
            log.warning("alerts are stored but not recorded as audit events: no way to queue them")
        failures = 0
        try:
            while not stopping.is_set():
                try:
                    busy = await self.round()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    busy = False
                    self.metrics.writer_errors.labels(stage="watch").inc()
                    log.warning("watch round failed: %s", described(exc))
                    await self._drop_connection()
                if failures:
                    delay = min(RETRY_MAX_S, self.settings.watch_interval_s * 2**failures)
                    await wait_or_stop(stopping, delay)
                elif busy:
                    await asyncio.sleep(0)
                else:
                    await wait_or_stop(stopping, self.settings.watch_interval_s)
        finally:
            await self._drop_connection()

    async def round(self) -> bool:
        """A step on every chain, then the outbox; True when a chain has more to examine now.
        Nothing when another process holds the watch lock."""
        conn = await self._leader()
        if conn is None or self.detector is None:
            return False
        detector = self.detector
        await detector.book.refresh(conn)
        busy = False
        for chain in range(min(self._chains, MAX_CHAINS)):
            step = await detector.step(conn, chain)
            busy = busy or step.behind > 0
        if time.monotonic() - self._swept > SWEEP_S:
            detector.examiner.sweep()
            self._swept = time.monotonic()
        if self.outbox is not None:
            try:
                await self.outbox.flush(conn)
            except Exception as exc:  # the queue full or Redis down: detection goes on
                self.metrics.writer_errors.labels(stage="watch_outbox").inc()
                log.warning("alerts not recorded yet: %s", described(exc))
        return busy

    async def _leader(self) -> asyncpg.Connection | None:
        """Our connection once it holds the watch lock (None: another process holds it; the
        lock is tried again on the same connection every LOCK_RETRY_S). A detector starts
        afresh with the lock: what it held before may have moved on meanwhile."""
        if self.detector is not None and self._conn is not None:
            return self._conn
        if time.monotonic() - self._tried < LOCK_RETRY_S:
            return None
        self._tried = time.monotonic()
        if self._conn is None:
            self._conn = await connect_raw(self.settings)
        conn = self._conn
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", WATCH_LOCK):
            return None
        self.detector = Detector(self.metrics)
        highest = await conn.fetchval(HIGHEST_CHAIN)
        self._chains = max(self.settings.stream_shards, (highest or 0) + 1)
        log.info("this process watches the log for inappropriate access")
        return conn

    async def _drop_connection(self) -> None:
        self.detector = None
        self._tried = float("-inf")
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close(timeout=2)
