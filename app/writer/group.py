"""The writer task group: N batch writers plus partition and batch-index upkeep, the recording
of key retirements in the log, checkpoints and the watch, with a graceful stop."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.db import driver_connection
from app.core.metrics import Metrics
from app.core.tasks import stop_tasks, wait_or_stop
from app.queue.recorder import Recorder
from app.queue.shards import ShardedStream
from app.store import partitions
from app.watch.watcher import Watch
from app.writer.checkpointer import Checkpointer
from app.writer.retirements import RETIREMENT_CHECK_S, RetirementRecorder
from app.writer.writer import BatchWriter, CircuitBreaker, backoff_seconds, consumer_name

log = logging.getLogger(__name__)

PARTITION_INTERVAL_S = 24 * 3600

SUMMARIZE_INTERVAL_S = 60.0


class WriterGroup:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        stream: ShardedStream,
        metrics: Metrics,
        recorder: Recorder | None = None,
    ) -> None:
        """`recorder` queues the watch's audit.alert.raised events, as the process's other
        records of its own; without it, alerts are stored and not recorded."""
        self.settings = settings
        self.recorder = recorder
        self.engine = engine
        self.stream = stream
        self.metrics = metrics
        self.breaker = CircuitBreaker(settings.breaker_threshold, metrics)
        self.writers = [
            BatchWriter(settings, stream, metrics, self.breaker, consumer_name(i))
            for i in range(settings.writers)
        ]
        self.retirements = RetirementRecorder(settings)
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for ring, name in (
            (self.settings.signing_key_ring, "AUDIT_SIGNING_KEYS"),
            (self.settings.ledger_key_ring, "AUDIT_LEDGER_KEYS"),
            (self.settings.service_key_ring, "AUDIT_SERVICE_KEYS"),
        ):
            if not ring:
                raise RuntimeError(f"{name} is empty: writers cannot seal events")
        self._tasks = [
            asyncio.create_task(w.run(self.stopping), name=f"writer:{w.name}") for w in self.writers
        ]
        for task in self._tasks:  # audit_writers: the writer tasks still running
            self.metrics.writers.inc()
            task.add_done_callback(lambda _: self.metrics.writers.dec())
        self._tasks.append(asyncio.create_task(self._partition_upkeep(), name="partitions"))
        self._tasks.append(asyncio.create_task(self._summarize_upkeep(), name="summarize"))
        if self.settings.ledger_private_key:
            checkpointer = Checkpointer(self.settings, self.metrics)
            self._tasks.append(
                asyncio.create_task(checkpointer.run(self.stopping), name="checkpoints")
            )
        else:
            log.warning(
                "AUDIT_LEDGER_PRIVATE_KEY is not set: no checkpoints are signed, so no witness "
                "cosigns the log and verification cannot be anchored"
            )
        self._tasks.append(asyncio.create_task(self._retirement_upkeep(), name="key-retirements"))
        if self.settings.watch_enabled:
            watch = Watch(self.settings, self.metrics, self.recorder)
            self._tasks.append(asyncio.create_task(watch.run(self.stopping), name="watch"))
        log.info("started %d writers", len(self.writers))

    async def _partition_upkeep(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            try:
                created = await partitions.ensure_partitions(
                    self.engine, self.settings.partitions_ahead_months
                )
                if created:
                    log.info("created %d audit_log partitions", created)
                attempt, delay = 0, float(PARTITION_INTERVAL_S)
            except Exception as exc:
                attempt += 1
                self.metrics.writer_errors.labels(stage="partitions").inc()
                log.warning("partition upkeep failed: %s", type(exc).__name__)
                delay = backoff_seconds(attempt, 1000, 300_000)
            await wait_or_stop(self.stopping, delay)

    async def _summarize_upkeep(self) -> None:
        """Summarize the batch index's new ranges every SUMMARIZE_INTERVAL_S, so reads of one
        batch (proofs, verification) read its pages, not every page of the ranges autovacuum
        has not summarized yet."""
        while True:
            await wait_or_stop(self.stopping, SUMMARIZE_INTERVAL_S)
            if self.stopping.is_set():
                return
            try:
                async with driver_connection(self.engine) as conn:
                    summarized = await partitions.summarize_batch_ranges(conn)
                if summarized is None:  # refused (logged): reads of batches read more
                    self.metrics.writer_errors.labels(stage="summarize").inc()
            except Exception as exc:
                self.metrics.writer_errors.labels(stage="summarize").inc()
                log.warning("batch index upkeep failed: %s", type(exc).__name__)

    async def _retirement_upkeep(self) -> None:
        """Record the key retirements due in the log: at start (even when asked to stop at
        once: it is one short transaction), then every RETIREMENT_CHECK_S."""
        attempt = 0
        while True:
            try:
                await self.retirements.check()
                attempt, delay = 0, RETIREMENT_CHECK_S
            except Exception as exc:
                attempt += 1
                self.metrics.writer_errors.labels(stage="key_retirements").inc()
                log.warning("recording key retirements failed: %s", type(exc).__name__)
                delay = backoff_seconds(attempt, 1000, 60_000)
            if self.stopping.is_set():
                return
            await wait_or_stop(self.stopping, delay)

    async def stop(self) -> None:
        """Let in-flight batches commit and ack; cancel what is still running after the grace
        period (its entries stay pending and are reclaimed by another writer)."""
        self.stopping.set()
        await stop_tasks(self._tasks, self.settings.shutdown_grace_s)
        for writer in self.writers:
            await writer.close()
        self._tasks = []
