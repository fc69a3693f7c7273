"""The batch writer against real Redis and PostgreSQL: crash recovery, poison, breaker, drain."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from app.core.config import Settings
from app.core.metrics import Metrics
from app.events.model import EVENT_LIST, EventIn
from app.events.record import EventRecord
from app.wiring import Resources, close_resources, open_resources
from app.writer.batch import CONFLICT, plan_batch
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import SettingsFactory, event, running, stored_rows, wait_stored
from tests.proxy import proxied_database


@pytest.fixture
async def parts(settings_factory: SettingsFactory) -> AsyncIterator[Resources]:
    settings = settings_factory(run_writers=False, claim_idle_ms=50, max_deliveries=2)
    res = await open_resources(settings, Metrics.create())
    yield res
    await close_resources(res)


def new_writer(res: Resources, name: str, settings: Settings | None = None) -> BatchWriter:
    settings = settings or res.settings
    breaker = CircuitBreaker(settings.breaker_threshold, res.metrics)
    return BatchWriter(settings, res.stream, res.metrics, breaker, name)


async def accept(res: Resources, org: str, count: int, **fields: object) -> list[str]:
    records = [{**event(**fields), "principal_id": f"u{i}"} for i in range(count)]
    validated = EVENT_LIST.validate_python(records)
    rows = [e.to_record(org, "2026-11-20T10:00:00.000000Z") for e in validated]
    await res.stream.enqueue(rows, res.settings.stream_entry_events)
    return [r["event_id"] for r in rows]


async def test_writer_killed_after_commit_before_ack_loses_and_duplicates_nothing(
    parts: Resources, org: str, database_url: str
) -> None:
    ids = await accept(parts, org, 40)
    crashed = new_writer(parts, "crashed")
    stop = asyncio.Event()
    entries = await crashed.collect(parts.stream.shards[0], stop)
    plan = plan_batch(entries, parts.settings.signing_key_ring[0], parts.macs)
    assert await crashed._store_isolating(plan, plan.rows, stop) == 40
    await crashed.close()  # gone without acking: its entries stay pending
    assert (await parts.stream.stats())["pending"] == 1

    await asyncio.sleep(0.1)  # past claim_idle_ms
    survivor = new_writer(parts, "survivor")
    assert await survivor.cycle(stop) == 1  # the reclaimed entry
    stats = await parts.stream.stats()
    assert stats["pending"] == 0 and stats["queued_events"] == 0
    assert stats["persisted_total"] == 40
    rows = await stored_rows(database_url, org)
    assert sorted(str(r["event_id"]) for r in rows) == sorted(ids)
    await survivor.close()


async def test_poison_goes_to_dead_letter_and_batch_mates_are_stored(
    parts: Resources, org: str, database_url: str
) -> None:
    good = [EventIn.model_validate(event(principal_id=f"g{i}")) for i in range(3)]
    records = [e.to_record(org, "2026-11-20T10:00:00.000000Z") for e in good]
    records[1]["status"] = "bogus"  # type: ignore[typeddict-item]  # refused by the table's CHECK
    await parts.stream.enqueue(records, 10)
    # An entry the API vouched for that cannot be read (the service's own fault, if ever).
    client = parts.stream.client
    keys = parts.stream.shards[0].keys
    key_id, mac = parts.macs.entries.sign(b"normal", b"1", b"", b"{not json")
    await client.xadd(keys.normal, {"n": 1, "e": b"{not json", "o": b"", "k": key_id, "m": mac})
    await client.incrby(keys.depth, 1)
    await client.incrby(keys.accepted, 1)

    writer = new_writer(parts, "w")
    await writer.cycle(asyncio.Event())
    rows = await stored_rows(database_url, org)
    assert sorted(r["principal_id"] for r in rows) == ["g0", "g2"]
    errors = sorted(d["error"] for d in await parts.stream.shards[0].dead_letters())
    assert len(errors) == 2
    assert errors[0].startswith("CheckViolationError")
    assert errors[1].startswith("unreadable entry")
    stats = await parts.stream.stats()
    assert stats["dead_letter"] == 2 and stats["queued_events"] == 0
    assert stats["persisted_total"] == 2  # 4 accepted = 2 stored + 2 dead-lettered
    await writer.close()


async def test_entry_delivered_too_often_is_written_alone(
    parts: Resources, org: str, database_url: str
) -> None:
    await accept(parts, org, 2)
    stream = parts.stream.shards[0]
    for consumer in ("a", "b"):  # two deliveries that never ack
        got = await stream.read(consumer, 10, None)
        if not got:
            await asyncio.sleep(0.1)
            cursors: dict[Any, str] = {"high": "0-0", "normal": "0-0"}
            got = await stream.claim(consumer, 50, cursors, 10)
        assert len(got) == 1
    await accept(parts, org, 3)
    await asyncio.sleep(0.1)
    writer = new_writer(parts, "c")
    await writer.cycle(asyncio.Event())  # the reclaimed entry, third delivery, alone
    await writer.cycle(asyncio.Event())  # the fresh entry
    rows = await stored_rows(database_url, org)
    assert len(rows) == 5 and len({r["batch_id"] for r in rows}) == 2
    assert await stream.dead_letters() == []
    stats = await stream.stats()
    assert stats["queued_events"] == 0 and stats["persisted_total"] == 5
    await writer.close()


async def test_resend_with_other_content_is_dead_lettered_not_dropped(
    parts: Resources, org: str, database_url: str
) -> None:
    fixed = {"event_id": str(uuid.uuid4()), "timestamp": "2026-11-20T10:00:00Z"}
    body = orjson.dumps({**event(), **fixed})
    first = EventIn.model_validate_json(body, strict=True).to_record(org, "2026-11-20T10:00:01Z")
    same = first.copy()
    other: EventRecord = {**first, "principal_id": "someone-else"}
    writer = new_writer(parts, "w")
    await parts.stream.enqueue([first], 10)
    await writer.cycle(asyncio.Event())
    await parts.stream.enqueue([same, other], 10)  # exact repeat and a conflicting one
    await writer.cycle(asyncio.Event())
    rows = await stored_rows(database_url, org)
    assert [r["principal_id"] for r in rows] == ["dr.smith"]
    dead = await parts.stream.shards[0].dead_letters()
    assert [d["error"] for d in dead] == [CONFLICT]
    stats = await parts.stream.stats()
    assert stats["accepted_total"] == 3
    assert stats["persisted_total"] == 2 and stats["dead_lettered_events"] == 1
    assert stats["queued_events"] == 0
    await writer.close()


async def test_writer_recreates_a_lost_consumer_group(
    parts: Resources, org: str, database_url: str
) -> None:
    writer = new_writer(parts, "w")
    keys = parts.stream.shards[0].keys
    await parts.stream.client.delete(keys.high, keys.normal)  # Redis lost its data
    await accept(parts, org, 3)  # XADD makes the streams again, without the group
    with pytest.raises(Exception, match="NOGROUP"):
        await writer.cycle(asyncio.Event())
    task = asyncio.create_task(writer.run(stop := asyncio.Event()))
    await wait_stored(database_url, org, 3)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_breaker_opens_while_database_is_down_and_everything_drains_after(
    parts: Resources, org: str, database_url: str
) -> None:
    proxy, url = await proxied_database(database_url)
    settings = parts.settings.model_copy(update={"database_url": url, "breaker_threshold": 2})
    writer = new_writer(parts, "w", settings)
    await accept(parts, org, 5)
    await proxy.cut()
    task = asyncio.create_task(writer.cycle(asyncio.Event()))
    for _ in range(200):
        if writer.breaker.is_open:
            break
        await asyncio.sleep(0.02)
    assert writer.breaker.is_open
    assert parts.metrics.circuit_open._value.get() == 1
    assert (await parts.stream.stats())["pending"] == 1  # held, not acked, not lost

    await proxy.start()
    await asyncio.wait_for(task, 10)
    assert not writer.breaker.is_open
    await wait_stored(database_url, org, 5)
    assert (await parts.stream.stats())["queued_events"] == 0
    await writer.close()
    await proxy.cut()


async def test_graceful_stop_commits_and_acks_in_flight_batches(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory(batch_size=200, writers=2)
    sent = 3000
    async with running(settings) as svc:
        headers = await svc.key(org)
        for _ in range(sent // 500):
            resp = await svc.client.post("/events/bulk", json=[event()] * 500, headers=headers)
            assert resp.status_code == 202
    # After shutdown nothing is in flight: every event is stored or still waiting, none pending.
    stats = await stream_stats_after(settings)
    rows = await stored_rows(database_url, org)
    assert stats["pending"] == 0
    assert len(rows) + stats["queued_events"] == sent
    assert stats["persisted_total"] == len(rows)


async def stream_stats_after(settings: Settings) -> dict[str, Any]:
    res = await open_resources(settings, Metrics.create())
    try:
        return await res.stream.stats()
    finally:
        await close_resources(res)
