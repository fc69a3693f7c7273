"""One benchmark, in order: the storage limit; then, against the service started for it, the
load generators' ceilings and --runs repetitions of bulk ramp and hold, single events and the
steady phase; then drain, accounting and verification."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis

from loadtests.bench import tools
from loadtests.bench.accounting import Accounting, Verification, account, verify
from loadtests.bench.bulk import BulkPhase, BulkRun, ramp_and_hold, steady
from loadtests.bench.context import Context
from loadtests.bench.database import scratch_databases
from loadtests.bench.options import Options
from loadtests.bench.payloads import bulk_pool, describe, single_pool
from loadtests.bench.probe import Probe
from loadtests.bench.progress import say
from loadtests.bench.sampler import Sample, Sampler
from loadtests.bench.service import Service, running_service
from loadtests.bench.single import Ceiling, SinglePhase, ceilings, single_events
from loadtests.bench.storage import StorageResult, measure_storage


@dataclass(frozen=True, slots=True)
class RunResult:
    run: int
    bulk: BulkRun
    single_saturation: SinglePhase
    single_80: SinglePhase
    single_lower: list[SinglePhase]  # paced at each of LOWER_SHARES of saturation
    steady: BulkPhase

    def client_counts(self) -> tuple[int, int]:
        """Events the generators saw accepted, and events in requests never answered."""
        bulk = [*self.bulk.phases(), self.steady]
        single = [self.single_saturation, self.single_80, *self.single_lower]
        accepted = sum(p.accepted_events for p in bulk) + sum(p.ok for p in single)
        unknown = sum(p.unknown_events for p in bulk) + sum(p.unknown_events for p in single)
        return accepted, unknown


@dataclass(slots=True)
class BenchResult:
    started_at: str
    elapsed_s: float
    machine: dict[str, Any]
    options: dict[str, Any]
    data: dict[str, dict[str, float]]  # what each pool of bodies holds (payloads.describe)
    storage: list[StorageResult]
    ceilings: list[Ceiling]
    runs: list[RunResult]
    accounting: Accounting
    verification: Verification
    timeline: list[Sample]


# What decides PostgreSQL's cost per row beyond the schema: the buffer cache, how often a
# checkpoint comes (each is followed by full-page images in the WAL), the commit's flush.
POSTGRES_SETTINGS = (
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "synchronous_commit",
    "full_page_writes",
)


async def machine(options: Options, database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        postgres = await conn.fetchval("SHOW server_version")
        settings = {name: await conn.fetchval(f"SHOW {name}") for name in POSTGRES_SETTINGS}
    finally:
        await conn.close()
    client = redis.Redis.from_url(options.redis_url)
    try:
        redis_version = (await client.info("server")).get("redis_version")
    finally:
        await client.aclose()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "postgresql_settings": settings,
        "redis": redis_version,
        "wrk": tools.available("wrk"),
        "h2load": tools.available("h2load"),
    }


async def measure_service(ctx: Context) -> tuple[list[Ceiling], list[RunResult]]:
    found = await ceilings(ctx)
    runs = []
    for number in range(1, ctx.options.runs + 1):
        say(f"run {number} of {ctx.options.runs}")
        bulk = await ramp_and_hold(ctx, number)
        saturated, (eighty, *lower) = await single_events(ctx, number)
        runs.append(RunResult(number, bulk, saturated, eighty, lower, await steady(ctx, number)))
    return found, runs


async def against_service(
    options: Options, service: Service, database_url: str
) -> tuple[list[Ceiling], list[RunResult], Accounting, list[Sample]]:
    probe = Probe(service, database_url, options.redis_url)
    await probe.open()
    sampler = Sampler(probe, options.sample_interval)
    sampling = asyncio.create_task(sampler.run())
    try:
        ctx = Context(options, service, probe, sampler)
        found, runs = await measure_service(ctx)
        say("draining the queue; accounting")
        drained, stats = await ctx.drain(options.drain_timeout)
        counts = [r.client_counts() for r in runs]
        accounting = await account(
            database_url, drained, stats, sum(c[0] for c in counts), sum(c[1] for c in counts)
        )
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        await probe.close()
    return found, runs, accounting, sampler.samples


def prepare_bodies(options: Options) -> dict[str, dict[str, float]]:
    """Every pool of request bodies, made before anything is timed; what each holds."""
    say("preparing request bodies (loadtests.bench.population)")
    pools = {
        "bulk": bulk_pool(options.bulk, options.pool_events),
        "steady": bulk_pool(options.steady_bulk, options.pool_events),
        "single": single_pool(options.pool_events // 2),
    }
    data = {name: describe(pool) for name, pool in pools.items()}
    for name, held in data.items():
        say(
            f"  {name}: {held['bodies']:,.0f} bodies, {held['events']:,.0f} events, "
            f"{held['patients']:,.0f} patients, {held['principals']:,.0f} principals"
        )
    return data


async def run_bench(options: Options) -> BenchResult:
    # SIGTERM cancels the run like Ctrl-C, so every process and database is cleaned up.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    started, clock = datetime.now(UTC), time.monotonic()
    data = prepare_bodies(options)
    with tempfile.TemporaryDirectory(prefix="audit-bench-logs-") as logs:
        async with scratch_databases(options.database_url, "storage", "service") as urls:
            storage_url, database_url = urls
            say("scratch databases created and migrated; storage limit (no HTTP, no Redis)")
            storage = await measure_storage(
                storage_url,
                options.storage_batches,
                options.batch_size,
                bulk_pool(options.bulk, options.pool_events),
            )
            async with running_service(
                database_url, options.redis_url, options.layout, Path(logs)
            ) as service:
                say(f"service up: {', '.join(service.processes)} at {', '.join(service.api_urls)}")
                found, runs, accounting, timeline = await against_service(
                    options, service, database_url
                )
            say("service stopped; python -m app verify")
            verification = await verify(service.settings, options.verify_jobs, accounting.rows)
            about = await machine(options, database_url)
    return BenchResult(
        started_at=started.isoformat(timespec="seconds"),
        elapsed_s=round(time.monotonic() - clock, 1),
        machine=about,
        options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        data=data,
        storage=storage,
        ceilings=found,
        runs=runs,
        accounting=accounting,
        verification=verification,
        timeline=timeline,
    )
