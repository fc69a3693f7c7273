"""`python -m app dev seed`: load realistic, sealed audit events fast, for benchmarks and demos.

Events are made the way a hospital's systems would send them (clinicians reading charts most of
the time, some searches and updates, logins without a patient, rare break-glass), spread evenly
over the last M months in time order, hashed, signed and sealed in batches through the writer's
own storage step (app.ledger.seal.seal_batch), so the seeded chain verifies like one the service
wrote. Several processes load disjoint time slices at once; each prints its progress.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from app.core.config import Settings
from app.core.db import connect_raw
from app.core.timefmt import format_timestamp
from app.events.fields import Classification, Status
from app.events.record import EventRecord
from app.ledger.seal import seal_batch
from app.ledger.signing import PublicSigner
from app.writer.batch import record_row

# (action, share, target type, carries a patient, classification)
ACTIONS: tuple[tuple[str, float, str | None, bool, Classification], ...] = (
    ("fhir.patient.read", 0.22, "Patient", True, "PHI"),
    ("fhir.observation.read", 0.18, "Observation", True, "PHI"),
    ("ehr.chart.open", 0.14, "Chart", True, "PHI"),
    ("fhir.encounter.read", 0.09, "Encounter", True, "PHI"),
    ("fhir.patient.search", 0.07, "Patient", True, "PHI"),
    ("fhir.medicationrequest.create", 0.05, "MedicationRequest", True, "PHI"),
    ("ehr.note.update", 0.05, "DocumentReference", True, "PHI"),
    ("fhir.patient.update", 0.03, "Patient", True, "PHI"),
    ("fhir.diagnosticreport.read", 0.04, "DiagnosticReport", True, "PHI"),
    ("auth.login", 0.06, None, False, "INTERNAL"),
    ("auth.logout", 0.04, None, False, "INTERNAL"),
    ("report.export", 0.01, "Report", False, "CONFIDENTIAL"),
    ("admin.user.update", 0.01, "User", False, "INTERNAL"),
    ("portal.page.view", 0.009, "Page", False, "PUBLIC"),
    ("fhir.patient.delete", 0.001, "Patient", True, "PHI"),
)

PURPOSES = (
    ("TREAT", 0.86),
    ("HPAYMT", 0.06),
    ("HOPERAT", 0.05),
    ("PUBHLTH", 0.02),
    ("HRESCH", 0.01),
)

STATUSES: tuple[tuple[Status, float], ...] = (
    ("success", 0.95),
    ("failure", 0.03),
    ("attempt", 0.02),
)

USER_AGENTS = ("Epic Hyperspace/10.2", "Cerner PowerChart/2024", "Mozilla/5.0 portal", "ehr-sync/3")

BREAK_GLASS_SHARE = 0.002

# The people of the demo set (`make run DEMO=1`), whom the walk-throughs name.
DEMO_PRINCIPALS = (
    "dr.smith",
    "dr.jones",
    "dr.patel",
    "nurse.lee",
    "nurse.garcia",
    "pharm.chen",
    "clerk.brown",
    "svc-lab-interface",
)
DEMO_PATIENTS = 50  # p-100 to p-149


@dataclasses.dataclass(frozen=True, slots=True)
class SeedPlan:
    events: int
    orgs: int = 2
    months: int = 12
    batch_size: int = 5000
    processes: int = 2
    principals_per_org: int = 2000
    patients_per_org: int = 100_000
    random_seed: int = 1
    # Named organizations instead of org-01...; the demo's named people instead of numbered.
    org_names: tuple[str, ...] = ()
    demo_people: bool = False

    @property
    def organizations(self) -> list[str]:
        if self.org_names:
            return list(self.org_names)
        return [f"org-{i + 1:02d}" for i in range(self.orgs)]


def time_span(months: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """From the start of the month `months - 1` before this one until now (UTC)."""
    now = now or datetime.now(UTC)
    year, month = now.year, now.month - (months - 1)
    while month < 1:
        year, month = year - 1, month + 12
    return datetime(year, month, 1, tzinfo=UTC), now


Choice = TypeVar("Choice", bound=str)


def _pick(rng: random.Random, weighted: tuple[tuple[Choice, float], ...]) -> Choice:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


def uuid7_at(moment: datetime, rng: random.Random) -> str:
    """A version-7 UUID whose time part is `moment` (ids sort with the events' times)."""
    millis = int(moment.timestamp() * 1000)
    value = (millis << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62)
    return str(uuid.UUID(int=value | rng.getrandbits(62)))


class EventMaker:
    """Realistic events, deterministic for a given seed."""

    def __init__(self, plan: SeedPlan, seed: int) -> None:
        self.plan = plan
        self.rng = random.Random(seed)
        self.actions = list(ACTIONS)
        self.action_weights = [a[1] for a in ACTIONS]
        self.organizations = plan.organizations

    def record(self, moment: datetime) -> EventRecord:
        rng, plan = self.rng, self.plan
        action, _, target_type, with_patient, classification = rng.choices(
            self.actions, self.action_weights
        )[0]
        org = self.organizations[rng.randrange(len(self.organizations))]
        principal = rng.randrange(plan.principals_per_org)
        service = principal % 50 == 0
        principal_id = f"svc-{principal:04d}" if service else f"user-{principal:04d}"
        patient = f"pat-{rng.randrange(plan.patients_per_org):06d}" if with_patient else None
        if plan.demo_people:
            principal_id = DEMO_PRINCIPALS[principal % len(DEMO_PRINCIPALS)]
            service = principal_id.startswith("svc-")
            patient = f"p-{100 + rng.randrange(DEMO_PATIENTS)}" if with_patient else None
        break_glass = patient is not None and rng.random() < BREAK_GLASS_SHARE
        purpose = None
        if patient is not None:
            purpose = "ETREAT" if break_glass else _pick(rng, PURPOSES)
        status = _pick(rng, STATUSES)
        details = None
        if rng.random() < 0.3:
            details = {"fields": rng.sample(["name", "dob", "mrn", "address", "labs"], 2)}
        received = moment + timedelta(milliseconds=rng.randrange(5, 400))
        return {
            "action": action,
            "api_key_id": None,
            "break_glass": break_glass,
            "correlation_id": f"req-{rng.getrandbits(64):016x}",
            "data_classification": classification,
            "details": details,
            "event_id": uuid7_at(moment, rng),
            "ip_address": f"10.{principal % 200}.{principal // 200 % 250}.{principal % 97 + 1}",
            "organization_id": org,
            "outcome_description": "denied by policy" if status == "failure" else None,
            "patient_id": patient,
            "principal_id": principal_id,
            "principal_type": "service" if service else "user",
            "priority": "high" if break_glass else "normal",
            "purpose_of_use": purpose,
            "received_at": format_timestamp(received),
            "session_id": f"sess-{principal:04d}-{moment:%Y%m%d}",
            "status": status,
            "target_resource_id": f"{target_type}/{rng.getrandbits(40):x}" if target_type else None,
            "target_resource_type": target_type,
            "timestamp": format_timestamp(moment),
            "user_agent": USER_AGENTS[principal % len(USER_AGENTS)],
        }


def batch_times(
    span: tuple[datetime, datetime], batch: int, batches: int, size: int, rng: random.Random
) -> list[datetime]:
    """`size` sorted moments inside the `batch`-th of `batches` equal slices of the span."""
    start, end = span
    width = (end - start) / batches
    low = start + width * batch
    micros = max(1, int(width.total_seconds() * 1_000_000) - 1)
    return [
        low + timedelta(microseconds=m) for m in sorted(rng.randrange(micros) for _ in range(size))
    ]


async def _load_slice(
    settings: Settings, plan: SeedPlan, part: int, span: tuple[datetime, datetime]
) -> int:
    """Seal the batches part, part + processes, ... of the plan; returns events written."""
    key, ledger_key = settings.signing_key_ring[0], settings.ledger_key_ring[0]
    signer = PublicSigner(settings.ledger_private_key) if settings.ledger_private_key else None
    batches = -(-plan.events // plan.batch_size)
    maker = EventMaker(plan, plan.random_seed * 1000 + part)
    conn = await connect_raw(settings)
    written, started, last_report = 0, time.monotonic(), 0.0
    try:
        for batch in range(part, batches, plan.processes):
            size = min(plan.batch_size, plan.events - batch * plan.batch_size)
            moments = batch_times(span, batch, batches, size, maker.rng)
            rows = [record_row(maker.record(m), key) for m in moments]
            await seal_batch(conn, rows, ledger_key, signer)
            written += size
            now = time.monotonic()
            if now - last_report >= 5:
                rate = written / (now - started)
                print(f"seed[{part}]: {written:,} events, {rate:,.0f}/s", file=sys.stderr)
                last_report = now
    finally:
        await conn.close()
    return written


def _run_slice(
    settings: Settings, plan: SeedPlan, part: int, span: tuple[datetime, datetime]
) -> int:
    return asyncio.run(_load_slice(settings, plan, part, span))


async def _execute(settings: Settings, *statements: tuple[Any, ...]) -> None:
    """Run each (sql, *args) in turn on one connection."""
    conn = await connect_raw(settings)
    try:
        for sql, *args in statements:
            await conn.execute(sql, *args)
    finally:
        await conn.close()


def run_seed(settings: Settings, plan: SeedPlan) -> dict[str, Any]:
    """Load the plan; returns what was done and how fast."""
    if not settings.signing_key_ring:
        raise SystemExit("AUDIT_SIGNING_KEYS must be set: seeded events are signed")
    if plan.events < 1 or plan.orgs < 1 or plan.months < 1:
        raise SystemExit("--events, --orgs and --months must be at least 1")
    span = time_span(plan.months)
    ahead = settings.partitions_ahead_months
    asyncio.run(_execute(settings, ("SELECT audit_ensure_partitions($1, $2)", ahead, plan.months)))
    started = time.monotonic()
    processes = max(1, min(plan.processes, -(-plan.events // plan.batch_size)))
    plan = dataclasses.replace(plan, processes=processes)
    if processes == 1:
        written = _run_slice(settings, plan, 0, span)
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            written = sum(
                pool.starmap(_run_slice, [(settings, plan, p, span) for p in range(processes)])
            )
    elapsed = time.monotonic() - started
    asyncio.run(_execute(settings, ("ANALYZE audit_log",), ("ANALYZE audit_ledger",)))
    return {
        "events": written,
        "organizations": plan.organizations,
        "from": format_timestamp(span[0]),
        "to": format_timestamp(span[1]),
        "seconds": round(elapsed, 1),
        "events_per_second": round(written / elapsed) if elapsed else written,
        "processes": processes,
    }


def _seed(settings: Settings, args: argparse.Namespace) -> None:
    if not settings.database_url:
        raise SystemExit("AUDIT_DATABASE_URL must be set: seed loads into that database")
    plan = SeedPlan(
        events=args.events,
        orgs=args.orgs,
        months=args.months,
        batch_size=args.batch_size,
        processes=args.processes,
        random_seed=args.random_seed,
    )
    print(json.dumps(run_seed(settings, plan)))
