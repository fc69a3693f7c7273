"""Redis is not a trusted input to signing: the API vouches (a MAC with AUDIT_SERVICE_KEYS) for
every stream entry it queues, writers seal only entries whose MAC checks, and only dead letters
that writers vouched for can be replayed. Whoever can write to Redis cannot have an event
signed and sealed for any organization."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson

from app.events.model import EVENT_LIST
from app.queue.dead_letters import DeadLetters
from tests.conftest import event, stored_rows
from tests.queue.test_dead_letter import Rig, accept, balanced, drain, rig

__all__ = ["rig"]  # the fixture, shared with the dead-letter tests

FORGED_ID = "0badc0de-0000-4000-8000-000000000001"


def forged_records(org: str) -> bytes:
    body = [event(principal_id="mallory", event_id=uuid.UUID(FORGED_ID))]
    [forged] = EVENT_LIST.validate_python(body)
    return orjson.dumps([forged.to_record(org, "2026-11-20T10:00:00.000000Z")])


async def test_an_entry_written_to_redis_directly_is_never_sealed(
    rig: Rig, database_url: str
) -> None:
    shard = rig.res.stream.shards[0]
    client: Any = shard.client  # redis-py's reply types are too loose to check
    # As someone with XADD rights would: a well-formed entry, without or with a made-up MAC.
    await client.xadd(shard.keys.normal, {"n": 1, "e": forged_records(rig.org)})
    await client.xadd(
        shard.keys.normal,
        {"n": 1, "e": forged_records(rig.org), "o": b"{}", "k": b"service-1", "m": b"x" * 32},
    )
    [good] = await accept(rig, ["success"])
    await drain_all(rig)
    stored = {str(r["event_id"]) for r in await stored_rows(database_url, rig.org)}
    assert good in stored and FORGED_ID not in stored
    dead = await client.xrange(shard.keys.dead)
    assert [fields[b"org"] for _, fields in dead] == [b"", b""]  # owned by no organization
    assert all(fields[b"error"].startswith(b"forged entry") for _, fields in dead)
    listed = await rig.svc.client.get("/queue/dead-letter", headers=rig.admin)
    assert listed.json()["items"] == []
    # Counted as dead-lettered events beyond those accepted: the sign of an injection.
    await drain_all(rig)  # the listing itself was recorded: an event of its own
    stats = await rig.res.stream.stats()
    settled = stats["persisted_total"] + stats["dead_lettered_events"] + stats["queued_events"]
    assert settled - stats["accepted_total"] == 2 and stats["dead_lettered_events"] == 2


async def test_an_entry_changed_in_redis_is_not_sealed(rig: Rig, database_url: str) -> None:
    [event_id] = await accept(rig, ["success"])
    shard = rig.res.stream.shards[0]
    client: Any = shard.client  # redis-py's reply types are too loose to check
    [(entry_id, fields)] = await client.xrange(shard.keys.normal)
    changed = fields[b"e"].replace(b'"principal_id":"u0"', b'"principal_id":"mallory"')
    assert changed != fields[b"e"]
    await client.xdel(shard.keys.normal, entry_id)
    await client.xadd(shard.keys.normal, {**fields, b"e": changed})
    await drain_all(rig)
    assert await stored_rows(database_url, rig.org) == []
    [(_, dead)] = await client.xrange(shard.keys.dead)
    assert dead[b"error"].startswith(b"forged entry") and dead[b"org"] == b""
    assert event_id.encode() in dead[b"payload"]
    await balanced(rig)  # accepted, then dead-lettered: the counts still balance


async def test_a_dead_letter_no_writer_vouched_for_is_never_replayed(
    rig: Rig, database_url: str
) -> None:
    shard = rig.res.stream.shards[0]
    client: Any = shard.client  # redis-py's reply types are too loose to check
    payload = forged_records(rig.org)
    dead_id = await client.xadd(
        shard.keys.dead,
        {
            "source": shard.keys.normal,
            "id": "1-0",
            "org": rig.org,
            "error": "made up",
            "payload": payload,
            "deliveries": 1,
            "events": 1,
            "replays": 0,
            "first": "",
        },
    )
    await client.xadd(shard.keys.dead_index(rig.org), {"events": 1}, id=dead_id)
    resp = await rig.svc.client.post(
        "/queue/dead-letter/replay", json={"all": True}, headers=rig.admin
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["requeued_entries"], body["refused"]) == (0, [dead_id.decode()]), body
    queued = await client.xrange(shard.keys.normal)
    records = [r for _, fields in queued for r in orjson.loads(fields[b"e"])]
    assert records and FORGED_ID not in {r["event_id"] for r in records}
    letters = DeadLetters(rig.res.stream, rig.org, rig.res.macs)
    assert [letter.id for letter in (await letters.page(None, 10))[0]] == [dead_id.decode()]
    await drain_all(rig)
    stored = {str(r["event_id"]) for r in await stored_rows(database_url, rig.org)}
    assert FORGED_ID not in stored


async def drain_all(rig: Rig) -> None:
    """Let the writer take everything in the stream, forged entries included."""
    await drain(rig)
    shard = rig.res.stream.shards[0]
    client: Any = shard.client  # redis-py's reply types are too loose to check
    while await client.xlen(shard.keys.normal):
        await rig.writer.cycle(asyncio.Event())
