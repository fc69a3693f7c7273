"""Tenants isolated in every figure: queue figures and verification show an organization's key
only that organization's numbers and events; service-wide figures and a whole-ledger
verification need the `operator` scope."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from app.core.limits import TooManyVerifications
from app.events.model import EVENT_LIST
from app.ledger.verify import Report, verify_range
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import (
    SEALED_KEY_ID,
    SealedFactory,
    SettingsFactory,
    event,
    running,
)

ORG_FIGURES = {
    "organization",
    "queued_events",
    "queue_quota",
    "dead_letter",
    "rate_limit_key_events",
    "rate_limit_org_events",
}


async def test_queue_stats_show_an_admin_only_its_organization(
    settings_factory: SettingsFactory, org: str
) -> None:
    async with running(settings_factory(run_writers=False)) as svc:
        mine = await svc.key(org, ("ingest", "admin"))
        theirs = await svc.key(f"{org}-other", ("ingest",))
        operator = await svc.key("operations", ("operator",))
        await svc.client.post("/events/bulk", json=[event()] * 5, headers=mine)
        await svc.client.post("/events/bulk", json=[event()] * 7, headers=theirs)
        await asyncio.sleep(0.1)  # a depth poll or two
        stats = (await svc.client.get("/queue/stats", headers=mine)).json()
        assert set(stats) == ORG_FIGURES, stats
        assert stats["organization"] == org and stats["queued_events"] == 5
        assert (await svc.client.get("/operator/queue/stats", headers=mine)).status_code == 403
        service = (await svc.client.get("/operator/queue/stats", headers=operator)).json()
        assert service["queued_events"] == 12 and service["accepted_total"] == 12


async def mixed_ledger(sealed_factory: SealedFactory) -> Any:
    """A ledger whose batches hold events of two organizations, leaf by leaf."""
    sealed = await sealed_factory([])
    res = sealed.res
    writer = BatchWriter(res.settings, res.stream, res.metrics, CircuitBreaker(3, res.metrics), "w")
    for n in range(3):
        events = EVENT_LIST.validate_python([event(principal_id=f"u{n}-{i}") for i in range(6)])
        received = "2026-11-20T10:00:00.000000Z"
        records = [
            e.to_record("org-a" if i % 2 else "org-b", received, api_key_id=SEALED_KEY_ID)
            for i, e in enumerate(events)
        ]
        await res.stream.enqueue(records, 100)
        assert await writer.cycle(asyncio.Event()) == 1
    await writer.close()
    return sealed


async def test_verification_is_scoped_to_the_callers_organization(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await mixed_ledger(sealed_factory)
    whole = await verify_range(sealed.conn, sealed.verifier)
    assert whole.intact and (whole.entries, whole.events) == (3, 18)
    scoped_verifier = sealed.verifier.__class__(
        sealed.verifier.keys, ledger_keys=sealed.verifier.ledger_keys, organization_id="org-a"
    )
    mine = await verify_range(sealed.conn, scoped_verifier)
    assert mine.intact and (mine.entries, mine.events) == (3, 9)

    # Another organization's event changed: the operator's verification names it; this
    # organization's says that an event of another organization changed, and no more.
    row = await sealed.conn.fetchrow(
        "SELECT event_id FROM audit_log WHERE organization_id = 'org-b' LIMIT 1"
    )
    await sealed.conn.execute(
        "UPDATE audit_log SET principal_id = 'x' WHERE event_id = $1", row["event_id"]
    )
    assert _checks(await verify_range(sealed.conn, sealed.verifier)) == {"event_hash_mismatch"}
    changed = await verify_range(sealed.conn, scoped_verifier)
    assert [(f.check, f.event_id, f.detail) for f in changed.findings] == [
        ("event_hash_mismatch", None, "an event of another organization")
    ]
    # Its stored hash changed too: the shared batch's root no longer recomputes, which breaks
    # this organization's proofs: named, without naming the other organization's event.
    await sealed.conn.execute(
        "UPDATE audit_log SET hash = sha256(hash) WHERE event_id = $1", row["event_id"]
    )
    broken = await verify_range(sealed.conn, scoped_verifier)
    assert _checks(broken) == {
        "event_hash_mismatch",
        "event_signature_invalid",
        "merkle_root_mismatch",
    }
    assert all(f.event_id is None for f in broken.findings)
    summary = broken.summary()
    assert summary["events"] == 9 and summary["ledger_entries"] == 3


async def test_an_event_moved_out_of_an_organization_is_a_finding_of_its_own_verification(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await mixed_ledger(sealed_factory)
    scoped = sealed.verifier.__class__(
        sealed.verifier.keys, ledger_keys=sealed.verifier.ledger_keys, organization_id="org-a"
    )
    row = await sealed.conn.fetchrow(
        "SELECT event_id FROM audit_log WHERE organization_id = 'org-a' LIMIT 1"
    )
    await sealed.conn.execute(
        "UPDATE audit_log SET organization_id = 'nobody' WHERE event_id = $1", row["event_id"]
    )
    report = await verify_range(sealed.conn, scoped)
    assert _checks(report) == {"event_hash_mismatch"} and report.events == 8


async def test_the_api_verifies_an_organization_and_operators_the_whole(
    sealed_factory: SealedFactory, settings_factory: SettingsFactory
) -> None:
    sealed = await mixed_ledger(sealed_factory)
    settings = settings_factory(database_url=sealed.res.settings.database_url, run_writers=False)
    async with running(settings) as svc:
        tenant = await svc.key("org-a", ("verify",))
        operator = await svc.key("operations", ("operator",))
        scoped = _summary(await svc.client.get("/integrity/verify", headers=tenant))
        assert (scoped["events"], scoped["intact"]) == (9, True)
        assert (
            await svc.client.get("/operator/integrity/verify", headers=tenant)
        ).status_code == 403
        whole = _summary(await svc.client.get("/operator/integrity/verify", headers=operator))
        assert whole["events"] >= 18 and whole["intact"] is True
        # One verification at a time per organization: a second one waits its turn (429).
        held = svc.app.state.resources.verifications.acquire("k", "org-a", TooManyVerifications)
        try:
            busy = await svc.client.get("/integrity/verify", headers=tenant)
            assert (
                busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_verifications"
            )
        finally:
            held.release()


def _checks(report: Report) -> set[str]:
    return {f.check for f in report.findings}


def _summary(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    summary: dict[str, Any] = orjson.loads(resp.text.splitlines()[-1])["summary"]
    return summary
