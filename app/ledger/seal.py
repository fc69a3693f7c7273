"""Sealing a batch: insert its events and append its ledger entry in one transaction.

The events are COPYed straight into audit_log with their batch id and leaf index. Only then is
the chain touched: an advisory lock serializes the short step that reads the newest entry and
appends the next one (seq + 1, Merkle root, head, signatures), so concurrent writers never fork
the chain and do not wait on each other's inserts. The batch's leaves go onto the chain's log
(app.ledger.logstore): while its rows are copied, a thread hashes them and folds them into the
frontier of the newest entry as it was when the batch began (O(batch + log n)); under the lock,
the fold is redone only if another batch was sealed meanwhile, and the tiles are appended to in
the statement that appends the entry. The entry's sealed_at is taken under the lock too, the
database's clock or its predecessor's sealed_at if that is later, and its head (v3) commits to
it: along a chain, sealed_at never decreases, and no one can change it without the head.
With stream shards each shard seals into its own chain (its own seq, genesis head, log and
lock), so shards do not wait on each other at all.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.core.config import SigningKey
from app.ledger.chain import genesis_head, ledger_head_v3, sign_head
from app.ledger.hashing import content_digest
from app.ledger.logstore import pack_frontier, tile_appends, unpack_frontier
from app.ledger.merkle import LEAF_PREFIX, root_of_leaves
from app.ledger.signing import PublicSigner
from app.ledger.sql import APPEND_ENTRY, CHAIN_LOCK, EXISTING_KEYS, NEWEST_ENTRY, NEXT_BATCH
from app.ledger.tlog import EMPTY_FRONTIER, Frontier, StoredNode, append_leaves, frontier_root
from app.store.models import AUDIT_COLUMNS

BASE_COLUMNS = AUDIT_COLUMNS[:-2]  # without batch_id, leaf_index

HASH_POS = BASE_COLUMNS.index("hash")

TIMESTAMP_POS = BASE_COLUMNS.index("timestamp")

KEY_POSITIONS = tuple(BASE_COLUMNS.index(c) for c in ("event_id", "timestamp", "organization_id"))

HEAD_VERSION = 3  # app.ledger.chain.ledger_head_v3

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


@dataclass(frozen=True, slots=True)
class _Appended:
    """The batch's own root and leaf hashes, and its leaves appended to the log as it stood
    (`after_seq`, 0: empty) when the batch began."""

    root: bytes
    leaves: list[bytes]
    after_seq: int
    frontier: Frontier
    nodes: list[StoredNode]


def _batch_hashes(digests: list[bytes], after_seq: int, before: Frontier) -> _Appended:
    """Hashing done while the rows are copied, off the event loop and outside the chain lock."""
    leaves = [hashlib.sha256(LEAF_PREFIX + d).digest() for d in digests]
    frontier, nodes = append_leaves(before, leaves)
    return _Appended(root_of_leaves(leaves), leaves, after_seq, frontier, nodes)


def _log_before(entry: Any) -> tuple[int, Frontier]:
    """(seq, frontier) of the chain's newest entry ((0, empty) when it has none)."""
    if entry is None or entry["seq"] is None:
        return 0, EMPTY_FRONTIER
    return entry["seq"], unpack_frontier(entry["tree_size"], entry["frontier"])


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
    times = [row[TIMESTAMP_POS] for row in rows]
    hashing: asyncio.Task[_Appended] | None = None
    try:
        async with conn.transaction():
            began = await conn.fetchrow(NEXT_BATCH, chain)
            batch_id = began["batch_id"]
            guess = _log_before(began)
            hashing = asyncio.create_task(asyncio.to_thread(_batch_hashes, digests, *guess))
            records = [(*row, batch_id, index) for index, row in enumerate(rows)]
            await conn.copy_records_to_table("audit_log", records=records, columns=AUDIT_COLUMNS)
            done = await hashing
            await conn.execute(CHAIN_LOCK, LEDGER_LOCK + chain)
            newest = await conn.fetchrow(NEWEST_ENTRY, chain)
            seq = newest["seq"] + 1 if newest["seq"] is not None else 1
            prev_head = bytes(newest["head"]) if seq > 1 else genesis_head(chain)
            sealed_at = newest["sealed_at"]
            frontier, nodes = done.frontier, done.nodes
            if seq - 1 != done.after_seq:  # another batch was sealed meanwhile: fold again
                frontier, nodes = append_leaves(_log_before(newest)[1], done.leaves)
            tree_root = frontier_root(frontier)
            tiles = tile_appends(nodes)
            first, last = min(times), max(times)
            head = ledger_head_v3(
                prev_head,
                seq,
                done.root,
                len(rows),
                first,
                last,
                frontier.size,
                tree_root,
                sealed_at,
            )
            public = public_signer.sign(head) if public_signer else None
            await conn.execute(
                APPEND_ENTRY,
                chain,
                seq,
                batch_id,
                len(rows),
                done.root,
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
                tiles.levels,
                tiles.indexes,
                tiles.hashes,
                sealed_at,
            )
    finally:
        if hashing is not None and not hashing.done():
            hashing.cancel()
    return Sealed(chain, seq, batch_id, len(rows), head)
