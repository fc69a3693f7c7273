"""The resources one API or worker process runs on (engines, Redis, stream, caches,
limits), opened and closed in one place, and the services the API and the console call (ingest,
reads), built on them once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.apikeys.cache import KeyCache, key_lookup
from app.core import db
from app.core.config import Settings
from app.core.limits import Slots
from app.core.metrics import Metrics
from app.core.service_macs import ServiceMacs
from app.core.tasks import stop_tasks, wait_or_stop
from app.intake.dead_letters import DeadLetterDesk
from app.intake.service import Ingest
from app.queue.admission import Admission
from app.queue.coalesce import EnqueueBatcher
from app.queue.recorder import Recorder
from app.queue.shards import ShardedStream
from app.queue.stream import eviction_policy
from app.read.events import EventReads
from app.read.exports import EXPORT_CONNECTIONS
from app.read.integrity import Integrity
from app.read.log import LogReads
from app.read.reports import PhiReports
from app.witness.anchors import find_anchors
from app.writer.group import WriterGroup

log = logging.getLogger(__name__)

SAFE_EVICTION_POLICY = "noeviction"


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine  # queries and upkeep
    long_reads: AsyncEngine  # exports and verifications, apart (app.http.guarded_stream)
    auth_engine: AsyncEngine  # key lookups, never waiting behind anything else
    redis: redis.Redis
    stream: ShardedStream
    metrics: Metrics
    key_cache: KeyCache
    enqueuer: EnqueueBatcher
    exports: Slots
    verifications: Slots
    large_bodies: Slots
    admission: Admission
    recorder: Recorder
    macs: ServiceMacs
    # The services the HTTP API and the console call, built once.
    ingest: Ingest
    event_reads: EventReads
    phi_reports: PhiReports
    integrity: Integrity
    dead_letters: DeadLetterDesk
    log_reads: LogReads
    writers: WriterGroup | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    background: list[asyncio.Task[None]] = field(default_factory=list)


def redis_client(settings: Settings, *, block_ms: int = 1000) -> redis.Redis:
    """A client of one Redis, or of a Redis Cluster (AUDIT_REDIS_CLUSTER; the URL names any of
    its nodes). Every command the service sends touches keys of one hash tag, so both serve."""
    # Socket timeout above the blocking read time, so a blocked XREADGROUP is not cut off.
    options: dict[str, Any] = {
        "socket_timeout": block_ms / 1000 + 5,
        "socket_connect_timeout": 5,
        "max_connections": 256,
    }
    if settings.redis_cluster:
        return cast(redis.Redis, RedisCluster.from_url(settings.redis_url, **options))
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, **options)


async def check_redis_policy(client: redis.Redis, settings: Settings) -> None:
    policy = await eviction_policy(client)
    if policy is None or policy == SAFE_EVICTION_POLICY:
        if policy is None:
            log.warning("cannot read Redis maxmemory-policy; make sure it is noeviction")
        return
    message = f"Redis maxmemory-policy is {policy!r}: it may evict queued audit events"
    if settings.require_noeviction:
        raise RuntimeError(message + " (set it to noeviction, or AUDIT_REQUIRE_NOEVICTION=false)")
    log.warning(message)


async def poll_queue_depth(res: Resources) -> None:
    """Keep the queued-event count fresh for backpressure without a Redis call per request."""
    interval = res.settings.depth_poll_ms / 1000
    while not res.stopping.is_set():
        try:
            admission = res.admission
            mark = admission.mark()
            queued = await res.stream.queued_events()
            admission.refresh(queued, await res.stream.queued_by_organization(), mark)
            res.metrics.queue_depth.set(queued)
        except Exception as exc:
            res.metrics.writer_errors.labels(stage="depth_poll").inc()
            log.warning("queue depth poll failed: %s", type(exc).__name__)
        await wait_or_stop(res.stopping, interval)


async def open_resources(settings: Settings, metrics: Metrics) -> Resources:
    client = redis_client(
        settings, block_ms=max(settings.read_block_ms, settings.batch_max_wait_ms)
    )
    await check_redis_policy(client, settings)
    macs = ServiceMacs.of(settings.service_key_ring)
    stream = ShardedStream(
        client,
        settings.stream_prefix,
        settings.consumer_group,
        macs.entries,
        settings.stream_shards,
    )
    await stream.ensure_group()
    auth_engine = db.create_engine(
        settings, pool_size=2, overflow=4, command_timeout_s=settings.auth_lookup_timeout_s
    )
    s = settings
    engine = db.create_engine(settings)
    # An NDJSON export reads with up to EXPORT_CONNECTIONS connections at once.
    long_reads = db.create_engine(
        settings,
        pool_size=s.export_concurrency * EXPORT_CONNECTIONS + s.verify_concurrency,
        overflow=0,
    )
    exports = Slots("exports", s.export_concurrency, s.export_per_key, s.export_per_org)
    verifications = Slots(
        "verifications", s.verify_concurrency, s.verify_concurrency, s.verify_per_org
    )
    large_bodies = Slots(
        "large requests",
        s.large_bodies_at_once,
        s.large_bodies_per_key,
        2 * s.large_bodies_per_key,
        retry_after_s=1,
    )
    enqueuer = EnqueueBatcher(stream, settings.stream_entry_events)
    admission = Admission(settings)
    recorder = Recorder(stream, admission, s.stream_entry_events, metrics.accepted)
    return Resources(
        settings=settings,
        engine=engine,
        long_reads=long_reads,
        auth_engine=auth_engine,
        redis=client,
        stream=stream,
        metrics=metrics,
        key_cache=KeyCache(
            settings.auth_cache_seconds,
            key_lookup(auth_engine, macs.api_keys, metrics.api_key_rows_refused),
            outage_grace=settings.auth_outage_grace_s,
            negative_ttl=settings.auth_negative_cache_s,
        ),
        enqueuer=enqueuer,
        exports=exports,
        verifications=verifications,
        large_bodies=large_bodies,
        admission=admission,
        recorder=recorder,
        macs=macs,
        ingest=Ingest(
            settings, stream, enqueuer, admission, large_bodies, metrics.accepted, metrics.rejected
        ),
        event_reads=EventReads(engine, long_reads, recorder, exports, s.export_send_timeout_s),
        phi_reports=PhiReports(engine, recorder),
        integrity=Integrity(engine, long_reads, settings, recorder, verifications, find_anchors),
        dead_letters=DeadLetterDesk(stream, macs, admission, recorder),
        log_reads=LogReads(engine, settings.log_origin, settings.ledger_public_key),
    )


async def close_resources(res: Resources) -> None:
    res.stopping.set()
    if res.writers is not None:
        await res.writers.stop()
    await stop_tasks(res.background, grace_s=2.0)
    await res.redis.aclose()
    for engine in (res.engine, res.long_reads, res.auth_engine):
        await engine.dispose()


CHECK_TIMEOUT_S = 2.0


async def readiness(res: Resources) -> dict[str, str]:
    """Whether what the process needs answers (each "ok" or "failing: <why>"): Redis,
    PostgreSQL, and a writer's heartbeat in the stream, each within CHECK_TIMEOUT_S."""
    checks = await asyncio.gather(
        _check("redis", res.redis.ping()),
        _check("postgres", _database_ok(res.engine)),
        _check("writer_heartbeat", res.stream.writer_alive()),
    )
    return dict(checks)


async def _check(name: str, probe: Awaitable[Any]) -> tuple[str, str]:
    try:
        ok = await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except Exception as exc:
        return name, f"failing: {type(exc).__name__}"
    return name, "ok" if ok else "failing"


async def _database_ok(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(text("SELECT 1")))
