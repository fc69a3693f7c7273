"""After the run: every accepted event stored exactly once, sealed, and the chain intact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from app.cli.integrity import NOT_ANCHORED_EXIT
from loadtests.bench.database import app_status

COUNTS = """
SELECT (SELECT count(*) FROM audit_log) AS rows,
       (SELECT count(*) FROM audit_ledger) AS entries,
       (SELECT coalesce(sum(event_count), 0) FROM audit_ledger) AS sealed,
       (SELECT count(*) FROM audit_log WHERE action = 'audit.alert.raised') AS alerts
"""


@dataclass(frozen=True, slots=True)
class Accounting:
    drained: bool
    client_accepted: int  # events the load generators saw answered 202
    client_unknown: int  # events whose answer they never saw (cut off or timed out)
    accepted_total: int  # the service's count (queue stats)
    persisted_total: int
    dead_lettered_events: int
    discarded_events: int
    queued_events: int
    rows: int  # audit_log in the bench database
    sealed_rows: int  # events covered by ledger entries
    ledger_entries: int
    alert_events: int = 0  # the watch's audit.alert.raised events: accepted, sent by no client
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def problems_of(a: Accounting) -> list[str]:
    found = []
    if not a.drained:
        found.append(f"the queue did not drain: {a.queued_events} events still queued")
    if a.rows != a.accepted_total:
        found.append(f"{a.rows} rows stored for {a.accepted_total} events accepted")
    if a.persisted_total != a.accepted_total:
        found.append(f"persisted_total {a.persisted_total} != accepted_total {a.accepted_total}")
    if a.dead_lettered_events or a.discarded_events:
        found.append(f"{a.dead_lettered_events} dead-lettered, {a.discarded_events} discarded")
    if a.sealed_rows != a.rows:
        found.append(f"ledger entries seal {a.sealed_rows} events, audit_log holds {a.rows}")
    from_clients = a.accepted_total - a.alert_events
    if not a.client_accepted <= from_clients <= a.client_accepted + a.client_unknown:
        found.append(
            f"the service accepted {from_clients} events from clients (and {a.alert_events}"
            f" alert events of its own), the clients saw {a.client_accepted} accepted (and"
            f" {a.client_unknown} unanswered)"
        )
    return found


async def account(
    database_url: str, drained: bool, stats: dict[str, Any], client_accepted: int, unknown: int
) -> Accounting:
    conn = await asyncpg.connect(database_url)
    try:
        counts = await conn.fetchrow(COUNTS)
    finally:
        await conn.close()
    accounting = Accounting(
        drained=drained,
        client_accepted=client_accepted,
        client_unknown=unknown,
        accepted_total=int(stats["accepted_total"]),
        persisted_total=int(stats["persisted_total"]),
        dead_lettered_events=int(stats["dead_lettered_events"]),
        discarded_events=int(stats["discarded_events"]),
        queued_events=int(stats["queued_events"]),
        rows=int(counts["rows"]),
        sealed_rows=int(counts["sealed"]),
        ledger_entries=int(counts["entries"]),
        alert_events=int(counts["alerts"]),
    )
    accounting.problems.extend(problems_of(accounting))
    return accounting


@dataclass(frozen=True, slots=True)
class Verification:
    intact: bool
    exit_code: int
    seconds: float
    summary: dict[str, Any]


# Time allowed to `verify`: a floor, and per stored event (it checks about 15,000 a second here).
VERIFY_FLOOR_S = 600
VERIFY_S_PER_EVENT = 250e-6


async def verify(settings: dict[str, str], jobs: int, events: int) -> Verification:
    """`python -m app verify` over the whole bench database (`--jobs`, unless 0) of `events`
    events."""
    started = time.perf_counter()
    command = ["verify", *(["--jobs", str(jobs)] if jobs else [])]
    within_s = max(VERIFY_FLOOR_S, events * VERIFY_S_PER_EVENT)
    code, out, err = await app_status(command, settings, within_s=within_s)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    summary: dict[str, Any] = orjson.loads(lines[-1]) if lines else {"stderr": err[-2000:]}
    # The bench's service has no witness: an intact ledger is "not anchored" (exit 3, no
    # findings); anything broken exits 1.
    intact = code == 0 or (code == NOT_ANCHORED_EXIT and summary.get("findings") == 0)
    return Verification(intact, code, round(time.perf_counter() - started, 2), summary)
