"""What the watch's detector costs per event: seed N realistic events (`dev seed`'s events: two
organizations of 2,000 principals and 100,000 patients each, clinical reads and searches,
sign-ins, exports, break-glass now and then) into a scratch database (created here, dropped
after), sealed in batches of `--batch-size` at the bench's rate (`--rate` events a second of
event time, ending now or at `--end`), then run the detector over them a few times (its alerts and
progress cleared between runs) and print, for each run and as medians, the CPU per event of the
detector's process (Python: reading rows, the rules, storing alerts) and of its PostgreSQL
backend (when the server is on this host), the wall time and the alerts by rule; and the CPU per
event of the rules alone over the same accesses, already read.

    .venv/bin/python -m loadtests.watch_speed                  # 200,000 events, 5 runs
    .venv/bin/python -m loadtests.watch_speed --short          # 5,000 events, 1 run (CI)
    .venv/bin/python -m loadtests.watch_speed --cold           # as a detector just started

A run is the detector of a process that has watched all along (its windows are its own: nothing
to read back) unless --cold: then each principal's recent past is read back from audit_log when
it is first met, as after a restart. Both read each principal's baseline once (the first time its
count in a window reaches the baseline's floor), as on the first hour of a day.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from app.cli.migrate import migrate
from app.cli.seed import EventMaker, SeedPlan
from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.runtime import tune_gc
from app.ledger.seal import seal_batch
from app.watch.detector import EVENT_TIME, Detector, month_of, next_month
from app.watch.evaluate import Examiner
from app.watch.sql import ACCESSES
from app.writer.batch import record_row
from loadtests.bench.database import with_database
from loadtests.bench.procstat import sample
from loadtests.verify_speed import LOCAL_POSTGRES, admin, host_line

SHORT_EVENTS = 5_000


@dataclass(frozen=True, slots=True)
class WatchRun:
    events: int
    python_s: float  # the detector's process
    backend_s: float | None  # its PostgreSQL backend (None: not on this host)
    wall_s: float
    alerts: dict[str, int]

    @property
    def python_us(self) -> float:
        return self.python_s / self.events * 1e6

    @property
    def backend_us(self) -> float | None:
        return None if self.backend_s is None else self.backend_s / self.events * 1e6

    @property
    def total_us(self) -> float:
        return self.python_us + (self.backend_us or 0.0)


def settings_for(url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=url,
        signing_keys="bench-events:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        ledger_keys="bench-ledger:" + base64.b64encode(secrets.token_bytes(32)).decode(),
    )


async def seed(
    settings: Settings, events: int, rate: float, batch_size: int, end: datetime
) -> None:
    """`events` of dev seed's events, evenly spread over the events / rate seconds to `end`."""
    plan = SeedPlan(events=events)
    maker = EventMaker(plan, plan.random_seed)
    step = timedelta(seconds=1 / rate)
    start = end - step * events
    key, ledger_key = settings.signing_key_ring[0], settings.ledger_key_ring[0]
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await conn.execute("SELECT audit_ensure_partitions(1, 24)")
        for first in range(0, events, batch_size):
            count = min(batch_size, events - first)
            rows = [record_row(maker.record(start + step * (first + i)), key) for i in range(count)]
            await seal_batch(conn, rows, ledger_key, None)
        await conn.execute("ANALYZE audit_log")
        await conn.execute("ANALYZE audit_ledger")
    finally:
        await conn.close()


async def watch_once(url: str, cold: bool) -> WatchRun:
    """The detector over every entry, from the start; its alerts and progress cleared first."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM watch_alerts")
        await conn.execute("DELETE FROM watch_progress")
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        detector = Detector(Metrics.create(), started_at=time.time() if cold else 0.0)
        await detector.book.refresh(conn)
        before = sample(backend)
        cpu, wall = time.process_time(), time.perf_counter()
        events = 0
        while step := await detector.step(conn, 0):
            if not step.entries:
                break
            events += step.events
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        after = sample(backend)
        rows = await conn.fetch("SELECT rule, count(*) AS n FROM watch_alerts GROUP BY rule")
    finally:
        await conn.close()
    backend_s = after.cpu_s - before.cpu_s if before and after else None
    return WatchRun(events, cpu, backend_s, wall, {r["rule"]: r["n"] for r in rows})


async def rules_alone(url: str) -> tuple[int, float]:
    """The rules over every access, read first: accesses and CPU seconds of the examination."""
    conn = await asyncpg.connect(url)
    try:
        batches = [r["batch_id"] for r in await conn.fetch("SELECT batch_id FROM audit_ledger")]
        low, high = await conn.fetchrow("SELECT min(timestamp), max(timestamp) FROM audit_log")
        low, high = month_of(low), next_month(high)
        detector = Detector(Metrics.create(), started_at=0.0)
        await detector.book.refresh(conn)
        book = detector.book
        rows = await conn.fetch(
            ACCESSES, batches, low, high, book.export_patterns(), book.classifications()
        )
    finally:
        await conn.close()
    accesses = sorted(rows, key=EVENT_TIME)
    examiner = Examiner(started_at=0.0)
    cpu = time.process_time()
    for first in range(0, len(accesses), 5_000):
        examiner.examine(accesses[first : first + 5_000], detector.book)
    return len(accesses), time.process_time() - cpu


def describe(run: WatchRun) -> str:
    backend = "n/a" if run.backend_us is None else f"{run.backend_us:.1f}"
    alerts = ", ".join(f"{rule} {n}" for rule, n in sorted(run.alerts.items())) or "none"
    return (
        f"{run.events:,} events: detector process {run.python_us:.1f} us/event, PostgreSQL "
        f"backend {backend} us/event, together {run.total_us:.1f} us/event, wall "
        f"{run.wall_s:.2f} s ({run.events / run.wall_s:,.0f} events/s); alerts: {alerts}"
    )


async def run(args: argparse.Namespace) -> list[WatchRun]:
    name = f"audit_watchspeed_{uuid.uuid4().hex[:8]}"
    await admin(args.database_url, f'CREATE DATABASE "{name}"')
    url = with_database(args.database_url, name)
    runs: list[WatchRun] = []
    try:
        settings = settings_for(url)
        await asyncio.to_thread(migrate, settings)
        started = time.perf_counter()
        await seed(settings, args.events, args.rate, args.batch_size, args.end)
        print(
            f"seeded {args.events:,} events in {time.perf_counter() - started:.1f} s (batches of "
            f"{args.batch_size}, {args.rate:,.0f} events/s of event time, up to "
            f"{args.end:%Y-%m-%d %H:%M} UTC)"
        )
        print(host_line())
        for number in range(args.runs):
            done = await watch_once(settings.asyncpg_dsn, args.cold)
            runs.append(done)
            print(f"run {number + 1}: {describe(done)}")
        events, cpu = await rules_alone(settings.asyncpg_dsn)
        print(
            f"the rules alone: {events:,} accesses read, {cpu / args.events * 1e6:.1f} us per"
            " event stored"
        )
        print(host_line())
    finally:
        if args.keep:
            print(f"kept {name}: AUDIT_DATABASE_URL={url}")
        else:
            await admin(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    python = statistics.median(r.python_us for r in runs)
    backends = [r.backend_us for r in runs if r.backend_us is not None]
    backend = f"{statistics.median(backends):.1f}" if backends else "n/a"
    total = statistics.median(r.total_us for r in runs)
    alerts: Counter[str] = Counter()
    for r in runs:
        alerts.update(r.alerts)
    print(
        f"median of {len(runs)}{' (cold)' if args.cold else ''}: {runs[0].events:,} events: "
        f"detector process {python:.1f} us/event, PostgreSQL backend {backend} us/event, "
        f"together {total:.1f} us/event"
    )
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=15_000.0, help="events a second")
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--cold", action="store_true", help="as a detector just started")
    parser.add_argument(
        "--end",
        type=datetime.fromisoformat,
        default=datetime.now(UTC),
        help="when the events end (RFC 3339; default now): the time of day decides what the"
        " after-hours rule finds",
    )
    parser.add_argument("--short", action="store_true", help=f"{SHORT_EVENTS:,} events, 1 run")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AUDIT_DATABASE_URL") or LOCAL_POSTGRES,
        help="a database on the server to make the scratch database on",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    if args.short:
        args.events, args.runs = SHORT_EVENTS, 1
    if args.end.tzinfo is None:
        parser.error("--end needs a UTC offset")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tune_gc()  # as the writers' processes run (app.cli.serve)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
