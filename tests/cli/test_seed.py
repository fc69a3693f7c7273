"""dev seed: realistic events, sealed and verifiable, spread over the months asked for."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from app.cli.seed import SeedPlan, run_seed, time_span
from tests.conftest import SealedFactory


def test_time_span_starts_at_a_month_boundary() -> None:
    now = datetime(2026, 2, 15, 12, tzinfo=UTC)
    assert time_span(3, now) == (datetime(2025, 12, 1, tzinfo=UTC), now)
    assert time_span(1, now)[0] == datetime(2026, 2, 1, tzinfo=UTC)


async def test_seed_loads_sealed_events_that_verify(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([])
    plan = SeedPlan(events=2_500, orgs=3, months=3, batch_size=400, processes=2)
    result = await asyncio.to_thread(run_seed, sealed.res.settings, plan)
    assert result["events"] == 2_500
    counts = dict(
        await sealed.conn.fetch(
            "SELECT organization_id, count(*) FROM audit_log GROUP BY 1 ORDER BY 1"
        )
    )
    assert set(counts) == {"org-01", "org-02", "org-03"} and sum(counts.values()) == 2_500
    assert await sealed.conn.fetchval("SELECT count(*) FROM audit_ledger") == 7  # 2500 / 400
    months = await sealed.conn.fetchval(
        "SELECT count(DISTINCT date_trunc('month', timestamp AT TIME ZONE 'UTC')) FROM audit_log"
    )
    assert months == 3
    phi = await sealed.conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE data_classification = 'PHI' AND patient_id IS NULL"
    )
    assert phi == 0  # PHI events name their patient
    report = await sealed.verify()
    assert report.intact and report.events == 2_500
