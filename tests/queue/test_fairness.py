"""Per-tenant fairness: rate limits per key and organization, a queue quota per organization
(429 with Retry-After), and `priority: high` only for keys with the `priority` scope. One
tenant cannot fill the queue that every tenant shares."""

from __future__ import annotations

import asyncio

import pytest

from app.core.errors import Backpressure
from app.core.limits import TooManyRequests
from app.queue.admission import Admission
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import SettingsFactory, event, running


async def test_priority_high_needs_the_priority_scope(
    settings_factory: SettingsFactory, org: str
) -> None:
    async with running(settings_factory(run_writers=False)) as svc:
        plain = await svc.key(org, ("ingest",))
        allowed = await svc.key(org, ("ingest", "priority"))
        high = [event(), event(priority="high")]
        refused = await svc.client.post("/events/bulk", json=high, headers=plain)
        assert refused.status_code == 403, refused.text
        assert "priority" in refused.json()["error"]["message"]
        one = await svc.client.post("/events", json=event(priority="high"), headers=plain)
        assert one.status_code == 403
        assert (
            await svc.client.post("/events/bulk", json=high, headers=allowed)
        ).status_code == 202
        normal = await svc.client.post("/events", json=event(), headers=plain)
        assert normal.status_code == 202


async def test_rate_limits_per_key_and_organization(
    settings_factory: SettingsFactory, org: str
) -> None:
    settings = settings_factory(
        run_writers=False,
        max_events_per_request=100,
        rate_limit_key_events=50,  # bursts of 100
        rate_limit_org_events=100,  # bursts of 200
    )
    async with running(settings) as svc:
        first, second, third = [await svc.key(org, ("ingest",)) for _ in range(3)]
        other = await svc.key(f"{org}-other", ("ingest",))
        bulk = [event()] * 100
        assert (await svc.client.post("/events/bulk", json=bulk, headers=first)).status_code == 202
        limited = await svc.client.post("/events/bulk", json=bulk, headers=first)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # Another key of the organization has its own share, up to the organization's.
        assert (await svc.client.post("/events/bulk", json=bulk, headers=second)).status_code == 202
        org_limited = await svc.client.post("/events/bulk", json=bulk, headers=third)
        assert org_limited.status_code == 429
        # Another organization is not touched.
        assert (await svc.client.post("/events/bulk", json=bulk, headers=other)).status_code == 202
        await asyncio.sleep(0.25)  # 12.5 events back for the key
        assert (
            await svc.client.post("/events/bulk", json=[event()] * 10, headers=first)
        ).status_code == 202


async def test_one_organization_cannot_fill_the_shared_queue(
    settings_factory: SettingsFactory, org: str
) -> None:
    settings = settings_factory(run_writers=False, max_queue_depth=1000, org_queue_share=0.1)
    async with running(settings) as svc:
        heavy = await svc.key(org, ("ingest",))
        light = await svc.key(f"{org}-light", ("ingest",))
        full = [event()] * 100
        assert (await svc.client.post("/events/bulk", json=full, headers=heavy)).status_code == 202
        over = await svc.client.post("/events", json=event(), headers=heavy)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "queue_quota_exceeded"
        assert "Retry-After" in over.headers
        assert (await svc.client.post("/events/bulk", json=full, headers=light)).status_code == 202
        res = svc.app.state.resources
        assert await res.stream.queued_by_organization() == {org: 100, f"{org}-light": 100}
        # Once written, the quota is free again (across processes: counted in Redis).
        writer = BatchWriter(settings, res.stream, res.metrics, CircuitBreaker(3, res.metrics), "w")
        while await res.stream.queued_events():
            await writer.cycle(asyncio.Event())
        await writer.close()
        assert await res.stream.queued_by_organization() == {}
        await asyncio.sleep(settings.depth_poll_ms / 1000 * 3)
        again = await svc.client.post("/events", json=event(), headers=heavy)
        assert again.status_code == 202, again.text


def test_a_refused_request_spends_no_tokens(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(
        max_events_per_request=10, rate_limit_key_events=10, max_queue_depth=25, org_queue_share=1
    )
    admission = Admission(settings)  # the key's bucket holds 20 events
    scopes = frozenset({"ingest"})
    admission.admit("k", scopes, "org", 10)
    admission.refresh(20, {"org": 20}, admission.mark())  # other processes queued more
    with pytest.raises(Backpressure):  # the queue is full: refused, and no token spent
        admission.admit("k", scopes, "org", 10)
    admission.refresh(0, {}, admission.mark())  # written meanwhile
    admission.admit("k", scopes, "org", 10)  # the 10 tokens left
    with pytest.raises(TooManyRequests):
        admission.admit("k", scopes, "org", 1)


async def test_reads_are_recorded_through_the_same_admission(
    settings_factory: SettingsFactory, org: str
) -> None:
    settings = settings_factory(run_writers=False, max_queue_depth=200, org_queue_share=0.5)
    async with running(settings) as svc:
        res = svc.app.state.resources
        ingest = await svc.key(org, ("ingest",))
        reader = await svc.key(org, ("read",))
        other = await svc.key(f"{org}-other", ("ingest",))
        full = [event()] * 100
        assert (await svc.client.post("/events/bulk", json=full, headers=ingest)).status_code == 202
        assert (await svc.client.post("/events", json=event(), headers=ingest)).status_code == 429
        # The organization's quota is full: its auditors still read, and the read is recorded.
        read = await svc.client.get("/events", headers=reader)
        assert read.status_code == 200, read.text
        assert (await res.stream.queued_by_organization())[org] == 101
        await asyncio.sleep(settings.depth_poll_ms / 1000 * 3)
        rest = settings.max_queue_depth - await res.stream.queued_events()
        bulk = [event()] * rest
        assert (await svc.client.post("/events/bulk", json=bulk, headers=other)).status_code == 202
        # The whole queue is full: the read cannot join it, so it is refused, and not queued.
        refused = await svc.client.get("/events", headers=reader)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "queue_full"
        assert await res.stream.queued_events() == settings.max_queue_depth
