"""Events for the watch's tests: records made as a hospital's systems send them, sealed into a
chain by the writer's own storage step (app.ledger.seal.seal_batch)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.cli.seed import DEMO_PRINCIPALS, EventMaker, SeedPlan
from app.core.config import parse_signing_keys
from app.core.timefmt import format_timestamp
from app.events.record import EventRecord
from app.ledger.seal import Sealed, seal_batch
from app.writer.batch import record_row
from tests.conftest import TEST_LEDGER_KEYS, TEST_SIGNING_KEYS

SIGNING_KEY = parse_signing_keys(TEST_SIGNING_KEYS)[0]
LEDGER_KEY = parse_signing_keys(TEST_LEDGER_KEYS)[0]

# A Wednesday, mid-morning UTC: working hours under the default schedule.
WEDNESDAY_10AM = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def access(
    org: str,
    principal: str,
    patient: str | None,
    at: datetime,
    *,
    action: str = "fhir.patient.read",
    received_after: timedelta = timedelta(milliseconds=50),
    **fields: Any,
) -> EventRecord:
    """One event as the service stores it; `fields` override any of its columns."""
    record: EventRecord = {
        "action": action,
        "api_key_id": None,
        "break_glass": False,
        "correlation_id": None,
        "data_classification": "PHI" if patient else "INTERNAL",
        "details": None,
        "event_id": str(uuid.uuid4()),
        "ip_address": "10.1.2.3",
        "organization_id": org,
        "outcome_description": None,
        "patient_id": patient,
        "principal_id": principal,
        "principal_type": "user",
        "priority": "normal",
        "purpose_of_use": "TREAT" if patient else None,
        "received_at": format_timestamp(at + received_after),
        "session_id": None,
        "status": "success",
        "target_resource_id": None,
        "target_resource_type": "Patient" if patient else None,
        "timestamp": format_timestamp(at),
        "user_agent": None,
    }
    record.update(fields)  # type: ignore[typeddict-item]
    return record


async def seal_records(
    url: str, records: Sequence[EventRecord], chain: int = 0, batch_size: int = 5000
) -> list[Sealed]:
    """Seal `records` in order, `batch_size` to a ledger entry of `chain`."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT audit_ensure_partitions(1, 24)")
        sealed = []
        for start in range(0, len(records), batch_size):
            rows = [record_row(r, SIGNING_KEY) for r in records[start : start + batch_size]]
            sealed.append(await seal_batch(conn, rows, LEDGER_KEY, None, chain))
        return sealed
    finally:
        await conn.close()


def demo_traffic(
    org: str, start: datetime, span: timedelta, events: int, seed: int = 1
) -> list[EventRecord]:
    """The ordinary traffic of the demo set (`make run DEMO=1`: dr.smith, nurse.lee and the
    others, patients p-100 to p-149, break-glass on 0.2% of accesses), `events` of them in time
    order between `start` and `start + span`."""
    plan = SeedPlan(
        events=events,
        org_names=(org,),
        principals_per_org=len(DEMO_PRINCIPALS),
        demo_people=True,
    )
    maker = EventMaker(plan, seed)
    seconds = span.total_seconds()
    moments = sorted(
        start + timedelta(seconds=maker.rng.uniform(0, seconds)) for _ in range(events)
    )
    return [maker.record(moment) for moment in moments]
