"""What the Python client does with events that cannot be sent: an event JSON cannot carry is
refused where it is made (or alone, when it became so later), an event the service refuses is
refused alone and the rest delivered, an answer that is not about the events (a wrong key) keeps
every event, and the spool on disk is readable by its owner only."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from audit_ingest_client import (
    AccessError,
    AsyncAuditClient,
    AsyncBatcher,
    AuditClient,
    Batcher,
    Event,
    EventsRefused,
    Refusal,
    Retry,
    Spool,
)

from app.local.servers import free_port
from tests.conftest import SettingsFactory, running, wait_stored
from tests.sdk.test_client import event, stored_ids
from tests.served import served

QUICK = Retry(attempts=1)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def invalid(n: int) -> Event:
    """An event the service refuses (principal_id over 256 characters) and the client lets by:
    the service's limits are the service's."""
    return Event("fhir.patient.read", "success", "x" * 300, patient_id=f"p-{n}", details={"n": n})


def set_aside(spool: Path) -> list[dict[str, Any]]:
    """The refusals the spool set aside on disk, each `{"event", "status", "reason"}`."""
    records: list[dict[str, Any]] = []
    for path in sorted(spool.glob("*.failed")):
        assert mode(path) == 0o600
        records += json.loads(path.read_text())
    return records


async def test_an_event_json_cannot_carry_is_refused_where_it_is_made() -> None:
    with pytest.raises(TypeError, match="details"):
        Event("fhir.patient.read", "success", "dr-1", details={"at": datetime.now(UTC)})
    with pytest.raises(ValueError, match="details"):
        Event("fhir.patient.read", "success", "dr-1", details={"dose": float("nan")})
    with pytest.raises(TypeError, match="principal_id"):
        Event("fhir.patient.read", "success", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        Event("fhir.patient.read", "done", "dr-1")  # type: ignore[arg-type]
    spoilt = event(1)
    assert spoilt.details is not None
    spoilt.details["at"] = datetime.now(UTC)  # after it was made: found when added
    nowhere = f"http://127.0.0.1:{free_port()}"
    batcher = Batcher(AuditClient(nowhere, "aik_x", retry=QUICK))
    with pytest.raises(TypeError, match="details"):
        batcher.add(spoilt)
    batcher.close()
    async_batcher = AsyncBatcher(AsyncAuditClient(nowhere, "aik_x", retry=QUICK))
    with pytest.raises(TypeError, match="details"):
        await async_batcher.add(spoilt)
    await async_batcher.close()
    await async_batcher.client.aclose()


async def test_an_event_spoilt_after_add_is_refused_alone_by_a_batcher(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory()
    async with running(settings) as svc, served(settings) as server:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        good = [event(n) for n in range(40)]
        spoilt = event(99)

        def work() -> list[Refusal]:
            with AuditClient(server.url, key) as client:
                batcher = Batcher(client, max_batch=500, linger_s=0.5)
                for item in good[:20]:
                    batcher.add(item)
                batcher.add(spoilt)
                assert spoilt.details is not None
                spoilt.details["at"] = datetime.now(UTC)  # in the linger: found when sent
                for item in good[20:]:
                    batcher.add(item)
                batcher.close(timeout_s=3)
                return list(batcher.refused)

        refused = await asyncio.to_thread(work)
        await wait_stored(database_url, org, 40, within_s=5)
        assert sorted(await stored_ids(database_url, org)) == sorted(e.event_id for e in good)
    assert [(r.event, r.status) for r in refused] == [(spoilt, None)]
    assert "details" in refused[0].reason


async def test_an_event_spoilt_after_add_is_refused_alone_by_an_async_batcher(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory()
    async with running(settings) as svc:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        client = AsyncAuditClient("http://test", key)
        client._http = svc.client  # the in-process app, through the same transport
        batcher = AsyncBatcher(client, max_batch=500, linger_s=0.5)
        good = [event(n) for n in range(40)]
        spoilt = event(99)
        for item in good[:20]:
            await batcher.add(item)
        await batcher.add(spoilt)
        assert spoilt.details is not None
        spoilt.details["at"] = datetime.now(UTC)
        for item in good[20:]:
            await batcher.add(item)
        closed = asyncio.create_task(batcher.close())
        done, _ = await asyncio.wait([closed], timeout=10)
        assert closed in done, "the batcher could not close: one event held back the others"
        await wait_stored(database_url, org, 40, within_s=5)
        assert sorted(await stored_ids(database_url, org)) == sorted(e.event_id for e in good)
    assert [(r.event, r.status) for r in batcher.refused] == [(spoilt, None)]


async def test_send_many_resends_the_valid_events_of_a_422_and_sets_the_rest_aside(
    settings_factory: SettingsFactory, org: str, database_url: str, tmp_path: Path
) -> None:
    settings = settings_factory()
    spool = tmp_path / "spool"
    async with running(settings) as svc:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        client = AsyncAuditClient("http://test", key, spool_dir=spool)
        client._http = svc.client
        events = [event(n) for n in range(100)]
        events[37] = bad = invalid(37)
        with pytest.raises(EventsRefused) as raised:
            await client.send_many(events)
        valid = [e.event_id for e in events if e is not bad]
        await wait_stored(database_url, org, 99, within_s=5)
        assert sorted(await stored_ids(database_url, org)) == sorted(valid)
    error = raised.value
    assert error.status == 422 and error.event_ids == valid and not error.spooled
    ((refused_event, status, reason),) = [(r.event, r.status, r.reason) for r in error.refused]
    assert refused_event is bad and status == 422 and "principal_id" in reason
    ((record),) = set_aside(spool)
    assert record["event"] == bad.to_json() and record["status"] == 422
    assert "principal_id" in record["reason"]
    assert Spool(spool).batches() == []


async def test_a_batcher_sends_the_valid_events_of_a_422_and_keeps_the_refused_in_view(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory()
    async with running(settings) as svc, served(settings) as server:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        events = [event(n) for n in range(100)]
        events[5] = invalid(5)
        events[70] = invalid(70)
        seen: list[Refusal] = []

        def work() -> None:
            with AuditClient(server.url, key) as client:
                batcher = Batcher(client, max_batch=100, linger_s=0.5, on_refused=seen.extend)
                for item in events:
                    batcher.add(item)
                batcher.close(timeout_s=10)
                assert list(batcher.refused) == seen

        await asyncio.to_thread(work)
        valid = [e.event_id for n, e in enumerate(events) if n not in (5, 70)]
        await wait_stored(database_url, org, 98, within_s=5)
        assert sorted(await stored_ids(database_url, org)) == sorted(valid)
    assert [r.event for r in seen] == [events[5], events[70]]
    assert all(r.status == 422 and "principal_id" in r.reason for r in seen)


async def test_a_request_over_the_services_limit_is_split_not_refused(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory(max_events_per_request=10)
    async with running(settings) as svc:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        client = AsyncAuditClient("http://test", key)
        client._http = svc.client
        events = [event(n) for n in range(25)]
        assert await client.send_many(events) == [e.event_id for e in events]
        await wait_stored(database_url, org, 25, within_s=5)


async def test_a_wrong_key_stops_a_flush_and_keeps_the_spool_for_the_right_one(
    settings_factory: SettingsFactory, org: str, database_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    events = [event(n) for n in range(30)]
    with AuditClient(f"http://127.0.0.1:{free_port()}", "aik_x", retry=QUICK, spool_dir=spool) as c:
        assert c.send_many(events[:10]) is None and c.send_many(events[10:]) is None
    batches = Spool(spool).batches()
    assert len(batches) == 2
    settings = settings_factory()
    async with running(settings) as svc:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        rotated = AsyncAuditClient("http://test", "aik_revoked", spool_dir=spool)
        rotated._http = svc.client
        with pytest.raises(AccessError) as raised:
            await rotated.flush_spool()
        assert raised.value.status == 401
        assert Spool(spool).batches() == batches and set_aside(spool) == []
        with pytest.raises(AccessError) as raised:  # a send keeps its events on disk too
            await rotated.send_many([extra := event(30)])
        assert raised.value.spooled and raised.value.undelivered == []
        assert len(Spool(spool).batches()) == 3
        right = AsyncAuditClient("http://test", key, spool_dir=spool)
        right._http = svc.client
        assert await right.flush_spool() is True
        await wait_stored(database_url, org, 31, within_s=5)
        stored = sorted(await stored_ids(database_url, org))
    assert stored == sorted(e.event_id for e in [*events, extra])
    assert Spool(spool).batches() == [] and set_aside(spool) == []


async def test_a_batcher_keeps_its_events_through_a_401(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory()
    async with running(settings) as svc, served(settings) as server:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        events = [event(n) for n in range(30)]

        def work() -> None:
            with AuditClient(server.url, "aik_revoked") as client:
                batcher = Batcher(client, max_batch=10, linger_s=0.01)
                for item in events:
                    batcher.add(item)
                time.sleep(1.5)  # answered 401: kept, not refused
                assert not batcher.refused
                client.headers["Authorization"] = f"Bearer {key}"  # the key rotated in
                batcher.close(timeout_s=10)

        await asyncio.to_thread(work)
        await wait_stored(database_url, org, 30, within_s=5)
        assert sorted(await stored_ids(database_url, org)) == sorted(e.event_id for e in events)


async def test_an_async_batcher_closes_within_its_timeout_and_gives_back_what_is_left(
    settings_factory: SettingsFactory, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A revoked key (401) and no spool: the batcher keeps its events and tries again every
    second, so close() waits at most `timeout_s`, then hands back what was not delivered; an
    add() still waiting for room then is refused, not taken into a batcher that is gone."""
    settings = settings_factory()
    async with running(settings) as svc:
        await svc.key(org, ("ingest",))
        client = AsyncAuditClient("http://test", "aik_revoked", retry=QUICK)
        client._http = svc.client
        batcher = AsyncBatcher(client, max_batch=10, linger_s=0.01, max_pending=20)
        events = [event(n) for n in range(30)]
        for item in events:  # 10 in flight, 20 waiting: full
            await batcher.add(item)
        waiting = asyncio.create_task(batcher.add(event(30)))
        await asyncio.sleep(0.3)  # the first batch answered 401: kept, tried again
        assert not waiting.done()
        started = time.monotonic()
        left = await asyncio.wait_for(batcher.close(timeout_s=1), 10)
        assert 1 <= time.monotonic() - started < 3
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(waiting, 5)
    assert left == events and not batcher.refused
    assert "30 audit events not delivered" in caplog.text


async def test_a_batcher_closes_within_its_timeout_and_gives_back_what_is_left(
    settings_factory: SettingsFactory, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_factory()
    async with running(settings) as svc, served(settings) as server:
        await svc.key(org, ("ingest",))
        events = [event(n) for n in range(30)]

        def work() -> tuple[list[Event], float, BaseException | None]:
            with AuditClient(server.url, "aik_revoked", retry=QUICK) as client:
                batcher = Batcher(client, max_batch=10, linger_s=0.01, max_pending=20)
                for item in events:  # 10 in flight, 20 waiting: full
                    batcher.add(item)
                raised: list[BaseException] = []

                def add_one_more() -> None:
                    try:
                        batcher.add(event(30))
                    except RuntimeError as exc:
                        raised.append(exc)

                adding = threading.Thread(target=add_one_more)
                adding.start()
                time.sleep(0.3)
                started = time.monotonic()
                left = batcher.close(timeout_s=1)
                took = time.monotonic() - started
                adding.join(5)
                assert not adding.is_alive()
                return left, took, raised[0] if raised else None

        left, took, raised = await asyncio.to_thread(work)
    assert left == events and 1 <= took < 3
    assert isinstance(raised, RuntimeError) and "closed" in str(raised)
    assert "30 audit events not delivered" in caplog.text


def test_the_spool_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    made = Spool(spool)
    assert oct(mode(spool)) == oct(0o700)
    made.put([event(0)])
    ((batch),) = made.batches()
    assert oct(mode(batch)) == oct(0o600)
    older = tmp_path / "older"  # made 0755 with a 0644 batch by an earlier client
    older.mkdir(mode=0o755)
    os.chmod(older, 0o755)
    (older / "00000000000000000001-1.json").write_text("[]")
    os.chmod(older / "00000000000000000001-1.json", 0o644)
    Spool(older)
    assert oct(mode(older)) == oct(0o700)
    assert oct(mode(older / "00000000000000000001-1.json")) == oct(0o600)
    theirs = tmp_path / "theirs"  # another user's: not ours to change
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(PermissionError, match="owned by"):
        Spool(theirs)


async def test_a_refusal_naming_no_event_is_narrowed_down_to_the_event_it_is_about(
    settings_factory: SettingsFactory, org: str, database_url: str, tmp_path: Path
) -> None:
    """The service refuses a whole request without naming an event (JSON nested deeper than its
    parser takes): the client halves the request until the refusal is about one event alone."""
    settings = settings_factory()
    spool = tmp_path / "spool"
    deep: dict[str, Any] = {}
    for _ in range(300):
        deep = {"d": deep}
    async with running(settings) as svc:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        client = AsyncAuditClient("http://test", key, spool_dir=spool)
        client._http = svc.client
        events = [event(n) for n in range(20)]
        events[7] = bad = Event("fhir.patient.read", "success", "dr-7", details=deep)
        with pytest.raises(EventsRefused) as raised:
            await client.send_many(events)
        valid = [e.event_id for e in events if e is not bad]
        await wait_stored(database_url, org, 19, within_s=5)
        assert sorted(await stored_ids(database_url, org)) == sorted(valid)
    assert [r.event for r in raised.value.refused] == [bad]
    assert [record["event"]["event_id"] for record in set_aside(spool)] == [bad.event_id]
