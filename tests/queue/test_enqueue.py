"""Coalesced stream writes (app.queue.coalesce) and the ingest fast path (app.api.fastpath), on
real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis
from redis.exceptions import ResponseError

from app.api import fastpath
from app.core.config import Settings
from app.core.service_macs import ServiceMacs
from app.events.model import EventIn
from app.events.record import EventRecord
from app.queue.coalesce import EnqueueBatcher
from app.queue.shards import ShardedStream
from tests.conftest import Service, event, running, wait_stored


def records(n: int, org: str) -> list[EventRecord]:
    return [
        EventIn.model_validate(event(principal_id=f"u{i}")).to_record(org, "2026-11-20T10:00:00Z")
        for i in range(n)
    ]


async def stream_for(settings: Settings) -> tuple[redis.Redis, ShardedStream]:
    client = redis.Redis.from_url(settings.redis_url)
    entry_mac = ServiceMacs.of(settings.service_key_ring).entries
    stream = ShardedStream(client, settings.stream_prefix, "writers", entry_mac)
    await stream.ensure_group()
    return client, stream


async def test_concurrent_requests_share_lua_calls_and_lose_nothing(
    settings: Settings, org: str
) -> None:
    client, stream = await stream_for(settings)
    try:
        batcher = EnqueueBatcher(stream, chunk=500)
        await asyncio.gather(*(batcher.enqueue(records(1, org)) for _ in range(300)))
        await batcher.enqueue(records(2, org))  # alone again once idle
        entries: list[Any] = await client.xrange(stream.shards[0].keys.normal) or []
        counts = [int(fields[b"n"]) for _, fields in entries]
        assert sum(counts) == 302 == await stream.queued_events()
        # The 300 concurrent requests share a call or two; the lone one after has its own.
        assert len(entries) <= 3 and counts[-1] == 2
    finally:
        await client.aclose()


async def test_a_failed_write_fails_every_request_in_it_and_queues_none(
    settings: Settings, org: str
) -> None:
    client, stream = await stream_for(settings)
    try:
        await client.delete(stream.shards[0].keys.normal)
        await client.set(stream.shards[0].keys.normal, "not a stream")  # XADD now fails: WRONGTYPE
        batcher = EnqueueBatcher(stream, chunk=500)
        results = await asyncio.gather(
            *(batcher.enqueue(records(1, org)) for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, ResponseError) for r in results)
        assert await stream.queued_events() == 0
        await client.delete(stream.shards[0].keys.normal)
        await stream.ensure_group()
        await batcher.enqueue(records(1, org))  # the batcher goes on after a failure
        assert await stream.queued_events() == 1
    finally:
        await client.aclose()


async def test_fast_path_answers_like_the_routes_and_is_measured(
    settings: Settings, org: str, database_url: str
) -> None:
    async with running(settings) as service:
        headers = await service.key(org, ("ingest",))
        ok = await service.client.post("/events", json=event(), headers=headers)
        assert ok.status_code == 202 and set(ok.json()) == {"event_id"}
        bulk = await service.client.post("/events/bulk", json=[event(), event()], headers=headers)
        assert bulk.status_code == 202 and bulk.json()["accepted"] == 2
        await wait_stored(database_url, org, 3)
        no_key = await service.client.post("/events", json=event())
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "unauthenticated"
        reader = await service.key(org, ("read",))
        refused = await service.client.post("/events", json=event(), headers=reader)
        assert refused.status_code == 403
        # Other methods and paths are the framework's, as before.
        assert (await service.client.put("/events", headers=headers)).status_code == 405
        await assert_measured(service)


async def test_fast_path_turns_an_unexpected_error_into_the_usual_500(
    service: Service, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(ingest: Any, request: Any, caller: Any) -> Any:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setitem(fastpath.ROUTES, "/events", broken)
    headers = await service.key(org, ("ingest",))
    resp = await service.client.post("/events", json=event(), headers=headers)
    assert resp.status_code == 500
    assert resp.json()["error"] == {
        "code": "internal_error",
        "message": "internal error",
        "details": None,
    }
    # The service goes on answering.
    monkeypatch.undo()
    assert (await service.client.post("/events", json=event(), headers=headers)).status_code == 202


async def assert_measured(service: Service) -> None:
    text = (await service.client.get("/metrics")).text
    lines = [
        x
        for x in text.splitlines()
        if x.startswith("http_request_duration_seconds_count") and 'method="POST"' in x
    ]
    counts = {line.split('handler="')[1].split('"')[0]: float(line.split()[-1]) for line in lines}
    assert counts["/events"] >= 3 and counts["/events/bulk"] >= 1


@pytest.mark.parametrize("size", [1, 499, 500])
async def test_small_and_large_requests_are_queued_whole(
    service: Service, org: str, database_url: str, size: int
) -> None:
    headers = await service.key(org, ("ingest",))
    resp = await service.client.post(
        "/events/bulk", json=[event(principal_id=f"p{i}") for i in range(size)], headers=headers
    )
    assert resp.status_code == 202
    await wait_stored(database_url, org, size)
