"""Stream shards (AUDIT_STREAM_SHARDS): keys and slots, which writer serves which shard, one
ledger chain per shard, and verification, checkpoints, proofs, bundles and dead letters over
all of them. The real 3-master Redis Cluster run is in tests/faults/test_faults.py."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.crc import key_slot

from app.api.schemas import is_stream_id
from app.core.timefmt import parse_timestamp
from app.events.model import EVENT_LIST
from app.ledger.bundles import export_bundle, verify_bundle
from app.ledger.chain import GENESIS_HEAD, genesis_head
from app.ledger.proofs import check_checkpoint, event_proof, export_checkpoint
from app.ledger.verify import verify_chains, verify_range
from app.queue.dead_letters import DeadLetters
from app.queue.shards import ShardedStream, assigned_shards
from app.queue.stream import DeadItem, Settlement, StreamKeys, shard_tag
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import Sealed, SealedFactory, event

SHARDS = 3


def test_every_shard_is_served_by_every_roster_size() -> None:
    for shards in range(1, 6):
        for writers in range(1, 8):
            served = [assigned_shards(rank, writers, shards) for rank in range(writers)]
            flat = [s for part in served for s in part]
            assert sorted(set(flat)) == list(range(shards))
            if writers <= shards:  # each shard has exactly one writer
                assert sorted(flat) == list(range(shards))
            assert all(served), "no writer idles while it could share a shard"
    assert assigned_shards(-1, 3, 3) == []  # not (yet) in the roster


def test_shard_keys_are_stable_and_land_on_distinct_slot_ranges() -> None:
    assert StreamKeys.for_shard("audit", 0, 3) == StreamKeys.for_prefix("audit")
    tags = ["audit"] + [shard_tag("audit", i, 3) for i in (1, 2)]
    assert tags[1:] == [shard_tag("audit", i, 3) for i in (1, 2)]  # deterministic
    thirds = {key_slot(("{" + t + "}").encode()) * 3 // 16384 for t in tags}
    assert thirds == {0, 1, 2}  # one per master of an evenly split 3-master cluster
    keys = StreamKeys.for_shard("audit", 2, 3)
    slots = {key_slot(k.encode()) for k in (keys.high, keys.normal, keys.depth, keys.dead)}
    assert len(slots) == 1  # a shard's Lua scripts stay on one slot


def test_genesis_heads_differ_per_chain_and_chain_zero_is_unchanged() -> None:
    assert genesis_head(0) == GENESIS_HEAD == bytes(32)
    assert len({genesis_head(c) for c in range(5)}) == 5


def test_dead_letter_ids_of_other_shards_are_accepted() -> None:
    assert is_stream_id("1700000000000-0")
    assert is_stream_id("2:1700000000000-0")
    assert not is_stream_id("x:1700000000000-0")
    assert not is_stream_id("123:1700000000000-0")


async def fill(sealed: Sealed, requests: int, per_request: int) -> list[str]:
    """Requests go to the shards in turn; one writer (the only one in the roster) serves all."""
    res = sealed.res
    ids: list[str] = []
    for n in range(requests):
        events = EVENT_LIST.validate_python(
            [event(principal_id=f"s{n}-{i}", patient_id=f"p{i}") for i in range(per_request)]
        )
        records = [e.to_record(sealed.org, "2026-11-20T10:00:00.000000Z") for e in events]
        await res.stream.enqueue(records, 10_000)
        ids += [r["event_id"] for r in records]
    writer = BatchWriter(res.settings, res.stream, res.metrics, CircuitBreaker(3, res.metrics), "w")
    for _ in range(requests):
        await writer.cycle(asyncio.Event())
    await writer.close()
    return ids


@pytest.fixture
async def sharded(sealed_factory: SealedFactory) -> Sealed:
    return await sealed_factory([], stream_shards=SHARDS, read_block_ms=10)


async def test_each_shard_seals_its_own_chain_and_all_verify(sharded: Sealed) -> None:
    ids = await fill(sharded, requests=9, per_request=4)
    conn = sharded.conn
    stored = await conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE organization_id = $1", "org-sealed"
    )
    assert stored == len(ids) == 36
    chains = await conn.fetch(
        "SELECT chain, array_agg(seq ORDER BY seq) AS seqs, sum(event_count) AS events "
        "FROM audit_ledger GROUP BY chain ORDER BY chain"
    )
    assert [r["chain"] for r in chains] == [0, 1, 2]
    registry = sharded.res.metrics.registry
    for row in chains:  # each chain is gap-free from 1 and holds its shard's requests
        assert row["seqs"] == list(range(1, len(row["seqs"]) + 1))
        assert row["events"] == 12
        labels = {"chain": str(row["chain"])}
        assert registry.get_sample_value("audit_ledger_head_seq", labels) == row["seqs"][-1]
    report = await verify_chains(conn, sharded.verifier)
    assert report.intact, [f.as_dict() for f in report.findings]
    assert report.events == 36
    assert [c["chain"] for c in report.summary()["chains"]] == [0, 1, 2]
    # Stats add up over the shards.
    stats = await sharded.res.stream.stats()
    assert stats["shards"] == SHARDS
    assert stats["accepted_total"] == stats["persisted_total"] == 36
    assert stats["queued_events"] == 0


async def test_tampering_in_one_chain_is_named_with_its_chain(sharded: Sealed) -> None:
    await fill(sharded, requests=6, per_request=3)
    conn = sharded.conn
    victim = await conn.fetchrow(
        "SELECT a.event_id FROM audit_log a JOIN audit_ledger l USING (batch_id) "
        "WHERE l.chain = 2 AND l.seq = 1 AND a.leaf_index = 1"
    )
    await conn.execute("DELETE FROM audit_log WHERE event_id = $1", victim["event_id"])
    report = await verify_chains(conn, sharded.verifier)
    assert [(f.check, f.chain, f.seq, f.detail) for f in report.findings] == [
        ("event_missing", 2, 1, "leaf 1 of 6")
    ]
    # A seq range names one chain: chain 1 alone is intact, chain 2 is not.
    assert (await verify_range(conn, sharded.verifier, chain=1)).intact
    assert not (await verify_range(conn, sharded.verifier, chain=2)).intact


async def test_an_entry_cannot_start_another_chain(sharded: Sealed) -> None:
    """Chain c > 0 starts from its own genesis head, not chain 0's."""
    await fill(sharded, requests=3, per_request=2)
    first = await sharded.conn.fetchrow("SELECT * FROM audit_ledger WHERE chain = 1 AND seq = 1")
    assert bytes(first["prev_head"]) == genesis_head(1) != GENESIS_HEAD


async def test_checkpoint_proof_and_bundle_cover_every_chain(sharded: Sealed) -> None:
    ids = await fill(sharded, requests=6, per_request=2)
    conn, keys = sharded.conn, sharded.res.settings.ledger_keys_by_id
    checkpoint = await export_checkpoint(conn)
    assert checkpoint is not None
    assert [c["chain"] for c in checkpoint["chains"]] == [0, 1, 2]
    assert await check_checkpoint(conn, checkpoint, keys) == []
    # A checkpoint claiming more of chain 2 than the database holds: a cut tail, named.
    checkpoint["chains"][2]["seq"] += 5
    findings = await check_checkpoint(conn, checkpoint, keys)
    assert [(f.check, f.chain) for f in findings] == [("checkpoint_not_extended", 2)]
    proofs = [await event_proof(conn, "org-sealed", uuid.UUID(i)) for i in ids]
    assert {p["chain"] for p in proofs if p} == {0, 1, 2}
    start, end = parse_timestamp("2026-01-01T00:00:00Z"), parse_timestamp("2027-01-01T00:00:00Z")
    lines = [line async for line in export_bundle(conn, start, end, "org-sealed")]
    report = verify_bundle(lines, sharded.verifier)
    assert report.intact, [f.as_dict() for f in report.findings]
    assert report.events == len(ids)


async def test_dead_letters_of_every_shard_are_listed_and_replayed(sharded: Sealed) -> None:
    res = sharded.res
    shard = res.stream.shards[1]
    records = [
        e.to_record(sharded.org, "2026-11-20T10:00:00.000000Z")
        for e in EVENT_LIST.validate_python([event(principal_id="dead")])
    ]
    await shard.enqueue(records, 10)
    entries = await shard.read("probe", 10, None)
    payload = entries[0].payload
    key_id, mac = res.macs.dead_letters.sign(sharded.org.encode(), b"1", payload)
    item = DeadItem("refused", payload, 1, sharded.org, key_id, mac)
    await shard.settle([Settlement(entries[0], (item,))])
    dead = DeadLetters(res.stream, sharded.org, res.macs)
    letters, cursor = await dead.page(None, 10)
    assert cursor is None
    assert len(letters) == 1 and letters[0].id.startswith("1:")
    assert await dead.first_ids(10) == [letters[0].id]
    done = await dead.replay(await dead.fetch([letters[0].id, "2:1-0"]))
    assert (done.ids, done.events, done.remaining) == ([letters[0].id], 1, 0)
    assert await res.stream.client.xlen(shard.keys.normal) == 1  # back in its own shard


async def test_writers_split_the_shards_between_them(sharded: Sealed) -> None:
    stream: ShardedStream = sharded.res.stream
    first = await stream.roster("writer-a")
    b = await stream.roster("writer-b")
    a = await stream.roster("writer-a")  # both in the roster now
    assert first == [0, 1, 2]  # alone: all of them
    assert sorted(a + b) == [0, 1, 2] and not set(a) & set(b)
    await stream.leave_roster("writer-b")
    assert await stream.roster("writer-a") == [0, 1, 2]
    await stream.leave_roster("writer-a")
