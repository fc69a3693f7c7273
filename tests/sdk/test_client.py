"""The Python client (clients/python) against the real service: sync and async sends, retries
that honour 429's Retry-After, a 408 for a slow body sent again, and a batcher that survives
the service being killed mid-stream and restarted: every event stored exactly once, what could
not be sent spooled to disk and replayed in order."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from audit_ingest_client import (
    AsyncAuditClient,
    AsyncBatcher,
    AuditClient,
    AuditError,
    Batcher,
    Event,
    Retry,
    SessionContext,
    Spool,
)

from app.local.servers import free_port
from tests.conftest import SettingsFactory, running, wait_stored
from tests.served import served


def event(n: int = 0, **fields: object) -> Event:
    return Event(
        "fhir.patient.read",
        "success",
        f"dr-{n % 7}",
        patient_id=f"p-{n % 11}",
        data_classification="PHI",
        session_context=SessionContext(session_id=f"s-{n}", ip_address="10.0.0.1"),
        details={"n": n},
        **fields,  # type: ignore[arg-type]
    )


def test_events_carry_their_own_time_ordered_ids_and_times() -> None:
    events = [event(n) for n in range(200)]
    ids = [uuid.UUID(e.event_id) for e in events]
    assert all(i.version == 7 for i in ids) and len(set(ids)) == 200
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)
    body = events[0].to_json()
    assert body["event_id"] == events[0].event_id and body["timestamp"].endswith("Z")
    assert "target_resource_id" not in body and body["session_context"]["session_id"] == "s-0"
    assert Event.from_json(body) == events[0]


def test_retry_waits_grow_with_jitter_and_honour_retry_after() -> None:
    retry = Retry(attempts=5, base_s=0.1, max_s=1.0)
    assert all(0 <= retry.wait(0, None) <= 0.1 for _ in range(50))
    assert all(0 <= retry.wait(9, None) <= 1.0 for _ in range(50))
    assert all(retry.wait(0, 2.5) >= 2.5 for _ in range(50))


async def stored_ids(database_url: str, org: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT event_id FROM audit_log WHERE organization_id = $1 AND action = $2",
            org,
            "fhir.patient.read",
        )
    finally:
        await conn.close()
    return [str(r["event_id"]) for r in rows]


async def test_sync_client_and_batcher_against_the_service(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory()
    async with running(settings) as svc:
        headers = await svc.key(org, ("ingest",))
        key = headers["Authorization"].split(" ", 1)[1]
        async with served(settings) as server:

            def work() -> list[str]:
                with AuditClient(server.url, key) as client:
                    one = client.send(event(0))
                    many = client.send_many([event(n) for n in range(1, 1201)])
                    batcher = Batcher(client, max_batch=100, linger_s=0.05, max_pending=150)
                    extra = [event(n) for n in range(1201, 1501)]
                    for item in extra:
                        batcher.add(item)  # blocks beyond 150 waiting: memory stays bounded
                    batcher.close()
                    assert not batcher.refused
                    with pytest.raises(AuditError) as refused:
                        client.send(Event("audit.read", "success", "x"))  # reserved
                    assert refused.value.status == 422
                assert one is not None and many is not None
                return [*one, *many, *(e.event_id for e in extra)]

            sent = await asyncio.to_thread(work)
            await wait_stored(database_url, org, 1501)
    assert sorted(await stored_ids(database_url, org)) == sorted(sent)


async def test_429_retry_after_is_honoured(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory(rate_limit_key_events=50, max_events_per_request=100)
    async with running(settings) as svc:
        headers = await svc.key(org, ("ingest",))
        client = AsyncAuditClient(
            "http://test", headers["Authorization"].split(" ", 1)[1], retry=Retry(attempts=8)
        )
        client._http = svc.client  # the in-process app, through the same transport
        events = [event(n) for n in range(300)]
        started = time.monotonic()
        for start in range(0, 300, 100):
            await client.send_many(events[start : start + 100])
        assert time.monotonic() - started >= 2.0  # 300 events at 50/s after a burst of 100
        await wait_stored(database_url, org, 300)
    assert sorted(await stored_ids(database_url, org)) == sorted(e.event_id for e in events)


@contextlib.asynccontextmanager
async def stalling_proxy(upstream_port: int, answers: list[bytes]) -> AsyncIterator[str]:
    """A proxy to the service on `upstream_port` that, on its first connection only, passes the
    request head and a few bytes of the body and holds back the rest (a slow network), and
    adds `Retry-After: 1` to that connection's answer; the first line of every answer is kept
    in `answers`."""
    connections = 0

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        stalled = connections == 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)

        async def upward() -> None:
            if stalled:
                head = await reader.readuntil(b"\r\n\r\n")
                up_writer.write(head + await reader.readexactly(10))
                await asyncio.Event().wait()  # the rest of the body never comes
            while chunk := await reader.read(65536):
                up_writer.write(chunk)

        sending = asyncio.create_task(upward())
        try:
            answer = await up_reader.read(65536)
            answers.append(answer.split(b"\r\n", 1)[0])
            if stalled:
                answer = answer.replace(b"\r\n", b"\r\nretry-after: 1\r\n", 1)
            while answer:
                writer.write(answer)
                answer = await up_reader.read(65536)
        finally:
            sending.cancel()
            writer.close()
            up_writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_a_408_for_a_body_that_came_too_slowly_is_retried_after_retry_after(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    """The service's HTTP layer answers 408 when a body stalls (body_timeout_s) and closes the
    connection: the events are sent again, not taken for a wrong key or URL."""
    settings = settings_factory()
    answers: list[bytes] = []
    async with running(settings) as svc, served(settings, body_timeout_s=0.3) as server:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        async with stalling_proxy(server.port, answers) as url:
            client = AsyncAuditClient(url, key, retry=Retry(attempts=3, base_s=0.01, max_s=0.02))
            events = [event(n) for n in range(5)]
            started = time.monotonic()
            assert await client.send_many(events) == [e.event_id for e in events]
            waited = time.monotonic() - started
            await client.aclose()
        await wait_stored(database_url, org, 5, within_s=5)
        assert sorted(await stored_ids(database_url, org)) == sorted(e.event_id for e in events)
    assert answers == [b"HTTP/1.1 408 Request Timeout", b"HTTP/1.1 202 Accepted"]
    assert waited >= 1.0  # the Retry-After, not the 10-20 ms backoff


async def test_a_batcher_survives_the_service_killed_and_restarted(
    settings_factory: SettingsFactory, org: str, database_url: str, tmp_path: Path
) -> None:
    settings = settings_factory(claim_idle_ms=1000)
    port = free_port()
    spool = tmp_path / "spool"
    async with running(settings.model_copy(update={"run_writers": False})) as svc:
        headers = await svc.key(org, ("ingest",))
        key = headers["Authorization"].split(" ", 1)[1]
        client = AsyncAuditClient(
            f"http://127.0.0.1:{port}",
            key,
            timeout_s=2.0,
            retry=Retry(attempts=3, base_s=0.05, max_s=0.2),
            spool_dir=spool,
        )
        batcher = AsyncBatcher(client, max_batch=40, linger_s=0.02, max_pending=200)
        sent: list[Event] = []

        async def produce(count: int) -> None:
            for _ in range(count):
                item = event(len(sent))
                sent.append(item)
                await batcher.add(item)
                await asyncio.sleep(0.002)

        spooled = 0
        async with served(settings, port=port, claim_idle_ms=1000) as server:
            await produce(300)
            await server.process.killed()  # mid-stream: requests in flight
            await produce(300)  # nobody answers: retried, then spooled to disk
            for _ in range(200):
                spooled = len(Spool(spool).batches())
                if spooled and batcher._queue.empty():
                    break
                await asyncio.sleep(0.05)
        assert spooled > 0
        async with served(settings, port=port, claim_idle_ms=1000):
            await produce(300)
            await batcher.close()  # sends what waits, then the spool, oldest first
            await client.aclose()
            assert Spool(spool).batches() == [] and not batcher.refused
            await wait_stored(database_url, org, 900, within_s=60)
            ids = await stored_ids(database_url, org)
    assert len(ids) == len(set(ids)) == 900  # each exactly once
    assert set(ids) == {e.event_id for e in sent}


EXITING = """
import sys
from audit_ingest_client import AuditClient, Batcher, Event
batcher = Batcher(AuditClient(sys.argv[1], sys.argv[2]), max_batch=500, linger_s=30)
ids = []
for n in range(50):
    event = Event("fhir.patient.read", "success", "dr-exit", patient_id=f"p-{n}")
    ids.append(event.event_id)
    batcher.add(event)
print(",".join(ids))
# no close(): the batcher sends what waits when the interpreter exits
"""


async def test_a_batcher_sends_what_waits_when_the_program_exits(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory()
    async with running(settings) as svc, served(settings) as server:
        headers = await svc.key(org, ("ingest",))
        key = headers["Authorization"].split(" ", 1)[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", EXITING, server.url, key, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
        await wait_stored(database_url, org, 50)
    assert sorted(await stored_ids(database_url, org)) == sorted(out.decode().strip().split(","))


def test_what_cannot_be_delivered_is_spooled_whole_and_refusals_set_aside(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens
    spool = tmp_path / "spool"
    quick = Retry(attempts=1)
    with AuditClient(nowhere, "aik_x", retry=quick, spool_dir=spool) as client:
        events = [event(n) for n in range(2500)]  # three requests' worth
        assert client.send_many(events) is None
        (batch,) = Spool(spool).batches()
        assert [e.event_id for e in Spool(spool).read(batch) or []] == [e.event_id for e in events]
        broken = spool / "00000000000000000000-1.json"  # older than the batch: read first
        broken.write_text("{not json")
        assert client.flush_spool() is False  # the service is still away
        assert broken.with_suffix(".unreadable").exists() and not broken.exists()
        assert Spool(spool).batches() == [batch]  # kept, in order, for the next try
