"""The detector: examines each chain's sealed batches in order, after the newest seq it examined,
and stores the cases it finds.

It starts where the chains' stored progress (watch_progress) says, and from then on follows a
cursor of its own per chain. One step of a chain reads the next ledger entries (up to
EXAMINED_EVENTS events), the accesses of their batches that some rule reads, what the windowed
rules need from before (app.watch.evaluate.Examiner.unprimed, baselines), applies the rules in
the accesses' time order, and then, in one
transaction, inserts the alerts (a case found again is the same row: ON CONFLICT DO NOTHING)
and moves the chain's stored progress forward (never back). Either both happen or neither:
every entry's cases are stored once, across restarts and however many detectors run
(app.watch.watcher lets one work at a time; two at once each examine every entry, so each
counts whole windows, and store each case once).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson

from app.core.metrics import Metrics
from app.store.partitions import summarize_batch_ranges
from app.watch.cases import CaseKey
from app.watch.configuration import RuleBook
from app.watch.evaluate import DAY_S, BaselineKey, Examination, Examiner
from app.watch.sql import (
    ACCESSES,
    ADVANCE,
    ALL_PROGRESS,
    BASELINES,
    ENTRIES_AFTER,
    INSERT_ALERTS,
    NEWEST_SEQ,
    RECENT_FAILURES,
    RECENT_PATIENTS,
)

log = logging.getLogger(__name__)

# Events one step reads at most (at least one whole entry): bounds the time the event loop
# spends decoding rows, and each step's transaction.
EXAMINED_EVENTS = 5_000
EXAMINED_ENTRIES = 200
EXAMINED_INLINE = 500  # more accesses are examined in a thread
EVENT_TIME = operator.itemgetter(2)  # of a row of ACCESSES


@dataclass(frozen=True, slots=True)
class Step:
    """What one step of a chain did."""

    chain: int
    entries: int
    events: int  # in the entries examined (those no rule reads are not read)
    alerts: int  # newly stored
    behind: int  # entries still to examine after it


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def month_of(moment: datetime) -> datetime:
    """The start of the month (UTC) `moment` falls in: audit_log's partitions are months."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(moment: datetime) -> datetime:
    start = month_of(moment)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


class Detector:
    def __init__(self, metrics: Metrics, started_at: float | None = None) -> None:
        self.metrics = metrics
        self.book = RuleBook()
        self.examiner = Examiner(time.time() if started_at is None else started_at)
        self._before: list[int] | None = None
        self.cursors: dict[int, int] = {}  # chain -> the newest seq this detector examined

    async def step(self, conn: asyncpg.Connection, chain: int) -> Step:
        """Examine the chain's next entries after this detector's cursor."""
        before = await self._examined_before(conn)
        cursor = self.cursors.get(chain)
        if cursor is None:
            cursor = self.cursors[chain] = before[chain] if chain < len(before) else 0
        newest = await conn.fetchval(NEWEST_SEQ, chain) or 0
        self.metrics.watch_lag.labels(chain=str(chain)).set(max(0, newest - cursor))
        if newest <= cursor:
            return Step(chain, 0, 0, 0, 0)
        entries = _within(await conn.fetch(ENTRIES_AFTER, chain, cursor, EXAMINED_ENTRIES))
        first = min(e["first_timestamp"] for e in entries)
        await summarize_batch_ranges(conn)
        rows = await conn.fetch(
            ACCESSES,
            [e["batch_id"] for e in entries],
            month_of(first),
            next_month(max(e["last_timestamp"] for e in entries)),
            self.book.export_patterns(),
            self.book.classifications(),
        )
        rows.sort(key=EVENT_TIME)  # windows slide in event time; nearly sorted already
        if first.timestamp() - self.book.reach() < self.examiner.started_at:
            await self._prime(conn, rows)
        if len(rows) > EXAMINED_INLINE:  # off the event loop: it serves requests too
            found = await asyncio.to_thread(self.examiner.examine, rows, self.book)
        else:
            found = self.examiner.examine(rows, self.book)
        if found.candidates:
            await self._settle(conn, found)
        to_seq = entries[-1]["seq"]
        inserted = await self._store(conn, chain, to_seq, found)
        self.cursors[chain] = to_seq
        self.examiner.remember(found)
        events = sum(e["event_count"] for e in entries)
        self.metrics.watch_examined.inc(events)
        self.metrics.watch_lag.labels(chain=str(chain)).set(max(0, newest - to_seq))
        now = time.time()
        for key in inserted:
            draft = found.drafts[key]
            self.metrics.watch_alerts.labels(rule=key.rule).inc()
            self.metrics.watch_alert_latency.observe(max(0.0, now - draft.first_received))
        return Step(chain, len(entries), events, len(inserted), newest - to_seq)

    async def _store(
        self, conn: asyncpg.Connection, chain: int, to_seq: int, found: Examination
    ) -> list[CaseKey]:
        """The step's alerts and the chain's progress, in one transaction; the keys of the
        alerts newly inserted."""
        by_id = {key.alert_id(): key for key in found.drafts}
        async with conn.transaction():
            inserted = []
            if found.drafts:
                alerts = [draft.row() for draft in found.drafts.values()]
                inserted = await conn.fetch(INSERT_ALERTS, orjson.dumps(alerts).decode())
            await conn.execute(ADVANCE, chain, to_seq)
        return [by_id[row["alert_id"]] for row in inserted]

    async def _prime(self, conn: asyncpg.Connection, accesses: Sequence[asyncpg.Record]) -> None:
        """Read back the recent past of principals first seen since this detector started:
        what was examined before it, by another detector or before a restart, still counts."""
        examiner = self.examiner
        unprimed = examiner.unprimed(accesses, self.book)
        if not unprimed:
            return
        before = await self._examined_before(conn)
        for org, (principals, first, last) in unprimed.items():
            rules = self.book(org)
            volume, failures = rules.volume, rules.failures
            names = sorted(principals)
            patients: list[asyncpg.Record] = []
            failed: list[asyncpg.Record] = []
            if volume is not None:
                since = _at(first - volume.window_s)
                patients = await conn.fetch(RECENT_PATIENTS, org, names, since, _at(last), before)
            if failures is not None and "principal" in failures.by:
                since = _at(first - failures.window_s)
                prefix = failures.action_prefix.replace("_", "\\_").replace("%", "\\%") + "%"
                failed = await conn.fetch(
                    RECENT_FAILURES, org, names, since, _at(last), before, prefix
                )
            examiner.prime(org, names, rules, patients, failed)

    async def _examined_before(self, conn: asyncpg.Connection) -> list[int]:
        """The newest seq of each chain examined before this detector started (read at its
        first step: from then on it examines entries itself), chain c at index c."""
        if self._before is None:
            progress = dict(await conn.fetch(ALL_PROGRESS))
            chains = max(progress, default=-1) + 1
            self._before = [progress.get(chain, 0) for chain in range(chains)]
        return self._before

    async def _settle(self, conn: asyncpg.Connection, found: Examination) -> None:
        """The baselines the volume candidates need: one query per organization and day."""
        baselines: dict[BaselineKey, float | None] = {}
        for org, wanted in found.baselines_wanted().items():
            volume = self.book(org).volume
            if volume is None:
                continue
            by_day: dict[int, list[str]] = {}
            for principal, day in wanted:
                by_day.setdefault(day, []).append(principal)
            for day, principals in by_day.items():
                until = _at(day * DAY_S)
                since = _at((day - volume.baseline_days) * DAY_S)
                rows = await conn.fetch(
                    BASELINES, org, sorted(principals), since, until, volume.window_s
                )
                medians = _medians(rows, volume.baseline_min_windows)
                for principal in principals:
                    baselines[(org, principal, day)] = medians.get(principal)
        self.examiner.settle(found, baselines)


def _medians(rows: Sequence[asyncpg.Record], min_windows: int) -> Mapping[str, float]:
    return {r["principal_id"]: float(r["median"]) for r in rows if r["windows"] >= min_windows}


def _within(entries: Sequence[asyncpg.Record]) -> list[asyncpg.Record]:
    """The first entries holding at most EXAMINED_EVENTS events (at least the first one)."""
    taken: list[asyncpg.Record] = []
    events = 0
    for entry in entries:
        if taken and events + entry["event_count"] > EXAMINED_EVENTS:
            break
        taken.append(entry)
        events += entry["event_count"]
    return taken
