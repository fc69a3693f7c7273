"""Sealing a batch: insert its events and append its ledger entry in one transaction.

The events are COPYed straight into audit_log with their batch id and leaf index. Only then is
the chain touched: an advisory lock serializes the short step that reads the newest entry and
appends the next one (seq + 1, Merkle root, head, signatures), so concurrent writers never fork
the chain and do not wait on each other's inserts. Under the same lock the batch's leaves go
onto the chain's log (app.ledger.logstore): folded into the newest entry's frontier, O(batch +
log n) hashing, and one statement for the tiles; the leaf hashes are computed before the lock.
With stream shards each shard seals into its own chain (its own seq, genesis head, log and
lock), so shards do not wait on each other at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.core.config import SigningKey
from app.ledger.chain import genesis_head, ledger_head_v2, sign_head
from app.ledger.hashing import content_digest
from app.ledger.logstore import pack_frontier, tile_appends, unpack_frontier
from app.ledger.merkle import leaf_hash, merkle_root
from app.ledger.signing import PublicSigner
from app.ledger.sql import (
    APPEND_ENTRY,
    APPEND_TILES,
    CHAIN_LOCK,
    EXISTING_KEYS,
    NEWEST_ENTRY,
    NEXT_BATCH_ID,
)
from app.ledger.tlog import EMPTY_FRONTIER, append_leaves, frontier_root
from app.store.models import AUDIT_COLUMNS

BASE_COLUMNS = AUDIT_COLUMNS[:-2]  # without batch_id, leaf_index

HASH_POS = BASE_COLUMNS.index("hash")

TIMESTAMP_POS = BASE_COLUMNS.index("timestamp")

KEY_POSITIONS = tuple(BASE_COLUMNS.index(c) for c in ("event_id", "timestamp", "organization_id"))

HEAD_VERSION = 2  # app.ledger.chain.ledger_head_v2

LEDGER_LOCK = 0x6175646974  # pg_advisory_xact_lock key of chain 0; chain c locks LEDGER_LOCK + c

MAX_CHAINS = 1024

EventKey = tuple[str, datetime, str]


@dataclass(frozen=True, slots=True)
class Sealed:
    chain: int
    seq: int
    batch_id: int
    count: int
    head: bytes


def event_key(row: Sequence[Any]) -> EventKey:
    event_id, timestamp, organization_id = (row[i] for i in KEY_POSITIONS)
    return str(event_id), timestamp, organization_id


async def stored_contents(
    conn: asyncpg.Connection, keys: Sequence[EventKey]
) -> dict[EventKey, bytes]:
    """The content digests of those events that are already stored."""
    found = await conn.fetch(
        EXISTING_KEYS, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
    )
    return {
        (str(r["event_id"]), r["timestamp"], r["organization_id"]): content_digest(r) for r in found
    }


def _batch_hashes(digests: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The batch's own Merkle root and its leaf hashes (what it appends to the log); neither
    depends on the log, so they are computed before the chain lock is taken."""
    return merkle_root(digests), [leaf_hash(d) for d in digests]


async def seal_batch(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[Any, ...]],
    key: SigningKey,
    public_signer: PublicSigner | None,
    chain: int = 0,
) -> Sealed:
    """Insert `rows` (new events, unique keys) as one sealed batch of `chain`. A unique violation
    means an event was stored meanwhile: the caller drops the stored ones and seals the rest
    again."""
    if not 0 <= chain < MAX_CHAINS:
        raise ValueError(f"chain {chain} is outside 0..{MAX_CHAINS - 1}")
    digests = [row[HASH_POS] for row in rows]
    root_task = asyncio.create_task(asyncio.to_thread(_batch_hashes, digests))
    times = [row[TIMESTAMP_POS] for row in rows]
    try:
        async with conn.transaction():
            batch_id = await conn.fetchval(NEXT_BATCH_ID)
            records = [(*row, batch_id, index) for index, row in enumerate(rows)]
            await conn.copy_records_to_table("audit_log", records=records, columns=AUDIT_COLUMNS)
            root, leaves = await root_task
            await conn.execute(CHAIN_LOCK, LEDGER_LOCK + chain)
            newest = await conn.fetchrow(NEWEST_ENTRY, chain)
            seq = newest["seq"] + 1 if newest else 1
            prev_head = bytes(newest["head"]) if newest else genesis_head(chain)
            before = (
                unpack_frontier(newest["tree_size"], newest["frontier"])
                if newest
                else EMPTY_FRONTIER
            )
            frontier, nodes = append_leaves(before, leaves)
            tree_root = frontier_root(frontier)
            tiles = tile_appends(nodes)
            await conn.execute(APPEND_TILES, chain, tiles.levels, tiles.indexes, tiles.hashes)
            first, last = min(times), max(times)
            head = ledger_head_v2(
                prev_head, seq, root, len(rows), first, last, frontier.size, tree_root
            )
            public = public_signer.sign(head) if public_signer else None
            await conn.execute(
                APPEND_ENTRY,
                chain,
                seq,
                batch_id,
                len(rows),
                root,
                first,
                last,
                prev_head,
                head,
                key.key_id,
                sign_head(head, key),
                public,
                frontier.size,
                tree_root,
                pack_frontier(frontier),
                HEAD_VERSION,
            )
    finally:
        if not root_task.done():
            root_task.cancel()
    return Sealed(chain, seq, batch_id, len(rows), head)
