"""Dead letters per organization against real Redis and PostgreSQL: list, replay, delete, the
audit trail of each, and the accounting invariant after every step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from app.api.errors import PROTOCOL_ANSWERS
from app.events.model import EVENT_LIST
from app.queue.dead_letters import DeadLetters
from app.wiring import Resources
from app.writer.batch import plan_batch
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import Service, SettingsFactory, event, running, stored_rows

DEAD_LETTER = "/queue/dead-letter"
REPLAY = "/queue/dead-letter/replay"


@dataclass
class Rig:
    svc: Service
    res: Resources
    writer: BatchWriter
    org: str
    admin: dict[str, str]
    stranger: dict[str, str]  # an admin of another organization
    operator: dict[str, str]  # the service's operator (service-wide figures)


@pytest.fixture
async def rig(settings_factory: SettingsFactory, org: str) -> AsyncIterator[Rig]:
    settings = settings_factory(run_writers=False)
    async with running(settings) as svc:
        res: Resources = svc.app.state.resources
        breaker = CircuitBreaker(3, res.metrics)
        writer = BatchWriter(settings, res.stream, res.metrics, breaker, "w")
        admin = await svc.key(org, ("admin",))
        stranger = await svc.key(f"{org}-other", ("admin",))
        operator = await svc.key("operations", ("operator",))
        yield Rig(svc, res, writer, org, admin, stranger, operator)
        await writer.close()


async def accept(rig: Rig, statuses: list[str], org: str | None = None, **fields: Any) -> list[str]:
    """Queue one request of events; a status other than the known three passes the writer and
    is refused by the table's CHECK constraint: a real poison event."""
    bodies = [event(principal_id=f"u{i}", **fields) for i in range(len(statuses))]
    records = [
        e.to_record(org or rig.org, "2026-11-20T10:00:00.000000Z")
        for e in EVENT_LIST.validate_python(bodies)
    ]
    for record, status in zip(records, statuses, strict=True):
        record["status"] = status  # type: ignore[typeddict-item]  # may be none of the three
    await rig.res.stream.enqueue(records, rig.res.settings.stream_entry_events)
    return [record["event_id"] for record in records]


async def drain(rig: Rig) -> None:
    for _ in range(50):
        if await rig.res.stream.queued_events() == 0:
            return
        await rig.writer.cycle(asyncio.Event())
    raise AssertionError("the queue did not drain")


async def balanced(rig: Rig) -> dict[str, Any]:
    """Queue stats, after checking that every accepted event is accounted for exactly once."""
    resp = await rig.svc.client.get("/operator/queue/stats", headers=rig.operator)
    assert resp.status_code == 200
    stats: dict[str, Any] = resp.json()
    assert stats["accepted_total"] == (
        stats["persisted_total"]
        + stats["dead_lettered_events"]
        + stats["queued_events"]
        + stats["discarded_events"]
    )
    return stats


async def listed(rig: Rig, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    resp = await rig.svc.client.get(DEAD_LETTER, headers=headers, params=params)
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


async def audit_details(rig: Rig, database_url: str, action: str) -> list[dict[str, Any]]:
    await drain(rig)
    rows = await stored_rows(database_url, rig.org)
    return [orjson.loads(r["details"]) for r in rows if r["action"] == f"audit.{action}"]


async def test_poison_event_is_listed_to_its_organization_only(rig: Rig, database_url: str) -> None:
    good, bad = await accept(rig, ["success", "bogus"])
    await drain(rig)
    assert [str(r["event_id"]) for r in await stored_rows(database_url, rig.org)] == [good]
    assert (await balanced(rig))["dead_lettered_events"] == 1

    [item] = await listed(rig, rig.admin)
    assert item["event_ids"] == [bad] and item["events"] == 1
    assert item["error"].startswith("CheckViolationError, sqlstate 23514")
    assert "bogus" not in item["error"]
    assert item["deliveries"] == 1 and item["replays"] == 0 and item["source"] == "normal"
    assert item["first_failed"] == item["failed_at"] and item["payload"] is None
    [full] = await listed(rig, rig.admin, include_payload="true")
    assert [(r["event_id"], r["status"]) for r in full["payload"]] == [(bad, "bogus")]

    assert await listed(rig, rig.stranger) == []
    reader = await rig.svc.key(rig.org, ("read", "ingest", "verify"))
    resp = await rig.svc.client.get(DEAD_LETTER, headers=reader)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"

    details = await audit_details(rig, database_url, "dead_letter_list")
    assert [d["rows"] for d in details] == [1, 1]
    assert [d["query"]["include_payload"] for d in details] == [False, True]
    await balanced(rig)


async def test_replay_sends_the_event_through_the_writer_again(rig: Rig, database_url: str) -> None:
    [bad] = await accept(rig, ["bogus"])
    await drain(rig)
    [before] = await listed(rig, rig.admin)

    resp = await rig.svc.client.post(REPLAY, json={"ids": [before["id"]]}, headers=rig.stranger)
    assert resp.status_code == 200
    assert resp.json()["requeued_entries"] == 0 and resp.json()["not_found"] == [before["id"]]
    assert (await balanced(rig))["dead_lettered_events"] == 1

    resp = await rig.svc.client.post(REPLAY, json={"ids": [before["id"], "1-0"]}, headers=rig.admin)
    assert resp.status_code == 200
    assert resp.json() == {
        "requeued_entries": 1,
        "requeued_events": 1,
        "requeued_ids": [before["id"]],
        "not_found": ["1-0"],
        "refused": [],
        "remaining": 0,
    }
    stats = await balanced(rig)
    assert stats["dead_lettered_events"] == 0 and stats["dead_letter"] == 0
    assert stats["queued_events"] >= 1

    await drain(rig)  # still refused by the database: dead-lettered again, its history kept
    [after] = await listed(rig, rig.admin)
    assert after["id"] != before["id"] and after["event_ids"] == [bad]
    assert after["deliveries"] == 2 and after["replays"] == 1
    assert after["first_failed"] == before["first_failed"] <= after["failed_at"]
    assert bad not in {str(r["event_id"]) for r in await stored_rows(database_url, rig.org)}

    [replay] = await audit_details(rig, database_url, "dead_letter_replay")
    assert replay["rows"] == 1 and replay["query"]["event_ids"] == [bad]
    assert replay["query"]["not_found"] == ["1-0"]
    stats = await balanced(rig)
    assert stats["dead_lettered_events"] == 1 and stats["queued_events"] == 0


async def test_replay_after_the_fault_is_fixed_stores_the_event_once(
    rig: Rig, database_url: str
) -> None:
    # A valid event the database refused for a reason since fixed: dead-lettered the way the
    # writer does it, through the plan and settle.
    [event_id] = await accept(rig, ["success"], priority="high")
    entries = await rig.res.stream.shards[0].read("outage", 10, None)
    plan = plan_batch(entries, rig.res.settings.signing_key_ring[0], rig.res.macs)
    plan.kill_row(plan.rows[0], "CheckViolationError, sqlstate 23514, constraint ck_since_fixed")
    await rig.res.stream.shards[0].settle(plan.settlements())
    assert (await balanced(rig))["dead_lettered_events"] == 1
    [item] = await listed(rig, rig.admin)
    assert item["source"] == "high"

    resp = await rig.svc.client.post(REPLAY, json={"all": True}, headers=rig.stranger)
    assert resp.json()["requeued_entries"] == 0
    resp = await rig.svc.client.post(REPLAY, json={"all": True}, headers=rig.admin)
    assert resp.status_code == 200 and resp.json()["requeued_ids"] == [item["id"]]
    shard = rig.res.stream.shards[0]
    assert await shard.client.xlen(shard.keys.high) == 1  # back to its stream
    await balanced(rig)

    await drain(rig)
    stored = [str(r["event_id"]) for r in await stored_rows(database_url, rig.org)]
    assert stored.count(event_id) == 1
    assert await listed(rig, rig.admin) == []
    resp = await rig.svc.client.post(REPLAY, json={"all": True}, headers=rig.admin)
    assert resp.json()["requeued_entries"] == 0 and resp.json()["not_found"] == []
    stats = await balanced(rig)
    assert stats["dead_lettered_events"] == 0 and stats["discarded_events"] == 0


async def test_delete_needs_confirmation_discards_and_is_audited(
    rig: Rig, database_url: str
) -> None:
    [bad] = await accept(rig, ["bogus"])
    await drain(rig)
    [item] = await listed(rig, rig.admin)
    client = rig.svc.client

    for confirm in ({}, {"confirm": "yes"}):
        params = {"ids": item["id"], **confirm}
        resp = await client.delete(DEAD_LETTER, params=params, headers=rig.admin)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "confirmation_required"
    params = {"ids": [item["id"], "1-0"], "confirm": "delete"}
    resp = await client.delete(DEAD_LETTER, params=params, headers=rig.stranger)
    assert resp.status_code == 200
    assert resp.json()["deleted_entries"] == 0
    assert resp.json()["not_found"] == [item["id"], "1-0"]
    assert len(await listed(rig, rig.admin)) == 1
    await balanced(rig)

    resp = await client.delete(
        DEAD_LETTER, params={"all": "true", "confirm": "delete"}, headers=rig.admin
    )
    assert resp.status_code == 200
    assert resp.json() == {
        "deleted_entries": 1,
        "deleted_events": 1,
        "deleted_ids": [item["id"]],
        "not_found": [],
        "remaining": 0,
    }
    assert await listed(rig, rig.admin) == []
    stats = await balanced(rig)
    assert stats["discarded_events"] == 1 and stats["dead_lettered_events"] == 0

    [deleted] = await audit_details(rig, database_url, "dead_letter_delete")
    assert deleted["rows"] == 1
    assert deleted["query"] == {
        "all": True,
        "ids": [item["id"]],
        "events": 1,
        "event_ids": [bad],
        "not_found": [],
    }
    await balanced(rig)


async def test_pages_follow_the_cursor_within_the_organization(rig: Rig) -> None:
    mine = await accept(rig, ["bogus", "bogus", "bogus"])
    await accept(rig, ["bogus"], org=f"{rig.org}-other")
    await drain(rig)
    resp = await rig.svc.client.get(DEAD_LETTER, params={"limit": 2}, headers=rig.admin)
    first = resp.json()
    assert len(first["items"]) == 2 and first["next_cursor"] == first["items"][-1]["id"]
    params = {"limit": 2, "cursor": first["next_cursor"]}
    second = (await rig.svc.client.get(DEAD_LETTER, params=params, headers=rig.admin)).json()
    assert second["next_cursor"] is None
    seen = [i["event_ids"][0] for i in first["items"] + second["items"]]
    assert sorted(seen) == sorted(mine)
    assert len(await listed(rig, rig.stranger)) == 1
    last = f"{2**64 - 1}-{2**64 - 1}"
    assert await listed(rig, rig.admin, cursor=last) == []
    await balanced(rig)


BAD_LISTS: list[tuple[dict[str, Any], int, str]] = [
    ({"cursor": "abc"}, 400, "invalid_cursor"),
    ({"cursor": f"{2**64}-0"}, 400, "invalid_cursor"),
    ({"limit": 0}, 422, "validation_failed"),
    ({"limit": 1001}, 422, "validation_failed"),
    ({"limit": 101, "include_payload": "true"}, 422, "validation_failed"),
    ({"offset": 5}, 422, "validation_failed"),
]
BAD_SELECTIONS: list[Any] = [
    {},
    {"ids": []},
    {"ids": ["abc"]},
    {"ids": [f"{2**64}-0"]},
    {"ids": ["1-0"], "all": True},
    {"all": False},
    {"all": "true"},
    {"ids": [f"{i}-0" for i in range(501)]},
    {"ids": ["1-0"], "force": True},
]
BAD_DELETES = [{"confirm": "delete"}, {"ids": "1-0", "all": "true", "confirm": "delete"}]


async def test_bad_input_is_refused_clearly(rig: Rig) -> None:
    client = rig.svc.client
    for params, status, code in BAD_LISTS:
        resp = await client.get(DEAD_LETTER, params=params, headers=rig.admin)
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), params
    for body in BAD_SELECTIONS:
        resp = await client.post(REPLAY, json=body, headers=rig.admin)
        assert resp.status_code == 422, body
    resp = await client.post(
        REPLAY, content=b"{not json", headers={**rig.admin, "content-type": "application/json"}
    )
    assert resp.status_code == 422
    for params in BAD_DELETES:
        resp = await client.delete(DEAD_LETTER, params=params, headers=rig.admin)
        assert resp.status_code == 422, params
    stats = await balanced(rig)
    assert stats["dead_letter"] == 0 and stats["discarded_events"] == 0


async def test_openapi_describes_the_dead_letter_errors(rig: Rig) -> None:
    paths = (await rig.svc.client.get("/openapi.json")).json()["paths"]
    expected = {
        ("get", DEAD_LETTER): {"200", "400", "401", "403", "422", "503"},
        ("delete", DEAD_LETTER): {"200", "400", "401", "403", "422", "503"},
        ("post", REPLAY): {"200", "401", "403", "422", "503"},
    }
    protocol = {str(code) for code in PROTOCOL_ANSWERS}  # what the HTTP layer answers alone
    for (method, path), codes in expected.items():
        codes |= protocol
        responses = paths[path][method]["responses"]
        assert set(responses) == codes
        for code in codes - {"200"}:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorResponse")


async def test_set_aside_caps_hold_under_concurrent_senders_and_bytes_come_back(rig: Rig) -> None:
    """The caps are checked and the item added in one step: 40 set-asides at once under a cap
    of 10 items keep exactly 10, and under a cap of bytes never more; deleting gives the bytes
    back, and a vouched item replayed gives its bytes back too."""
    dead = DeadLetters(rig.res.stream, rig.org, rig.res.macs)
    keys = rig.res.stream.shards[0].keys
    payload = orjson.dumps({"message": "x" * 100})
    kept = await asyncio.gather(
        *(dead.set_aside("e", payload, vouched=False, max_items=10) for _ in range(40))
    )
    assert sum(k is not None for k in kept) == 10 and await dead.count() == 10
    assert int(await rig.res.stream.client.hget(keys.dead_bytes, rig.org) or 0) == 10 * len(payload)
    assert await dead.delete(await dead.first_ids(10))
    assert await rig.res.stream.client.hget(keys.dead_bytes, rig.org) is None
    kept = await asyncio.gather(
        *(
            dead.set_aside("e", payload, vouched=False, max_bytes=5 * len(payload) + 1)
            for _ in range(40)
        )
    )
    assert sum(k is not None for k in kept) == 5
    (body,) = EVENT_LIST.validate_python([event(principal_id="u")])
    record = orjson.dumps(body.to_record(rig.org, "2026-11-20T10:00:00.000000Z"))
    assert await dead.set_aside("stopped", record, vouched=True, max_bytes=1) is None
    assert await dead.set_aside("stopped", record, vouched=True) is not None  # no cap given
    letters = [letter for letter in (await dead.page(None, 10))[0] if letter.error == "stopped"]
    assert (await dead.replay(letters)).events == 1
    assert await dead.delete(await dead.first_ids(10))
    assert await rig.res.stream.client.hget(keys.dead_bytes, rig.org) is None
