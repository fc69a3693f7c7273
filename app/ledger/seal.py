"""Sealing a batch: insert its events and append its ledger entry in one transaction.

The events are COPYed straight into audit_log with their batch id and leaf index. Only then is
the chain touched: an advisory lock serializes the short step that reads the newest entry and
appends the next one (seq + 1, Merkle root, head, signatures), so concurrent writers never fork
the chain and do not wait on each other's inserts. With stream shards each shard seals into its
own chain (its own seq, genesis head and lock), so shards do not wait on each other at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.core.config import SigningKey
from app.ledger.chain import genesis_head, ledger_head, sign_head
from app.ledger.hashing import content_digest
from app.ledger.merkle import merkle_root
from app.ledger.signing import PublicSigner
from app.ledger.sql import APPEND_ENTRY, CHAIN_LOCK, EXISTING_KEYS, NEWEST_ENTRY, NEXT_BATCH_ID
from app.store.models import AUDIT_COLUMNS

BASE_COLUMNS = AUDIT_COLUMNS[:-2]  # without batch_id, leaf_index

HASH_POS = BASE_COLUMNS.index("hash")

TIMESTAMP_POS = BASE_COLUMNS.index("timestamp")

KEY_POSITIONS = tuple(BASE_COLUMNS.index(c) for c in ("event_id", "timestamp", "organization_id"))

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
    root_task = asyncio.create_task(asyncio.to_thread(merkle_root, digests))
    times = [row[TIMESTAMP_POS] for row in rows]
    try:
        async with conn.transaction():
            batch_id = await conn.fetchval(NEXT_BATCH_ID)
            records = [(*row, batch_id, index) for index, row in enumerate(rows)]
            await conn.copy_records_to_table("audit_log", records=records, columns=AUDIT_COLUMNS)
            root = await root_task
            await conn.execute(CHAIN_LOCK, LEDGER_LOCK + chain)
            newest = await conn.fetchrow(NEWEST_ENTRY, chain)
            seq = newest["seq"] + 1 if newest else 1
            prev_head = bytes(newest["head"]) if newest else genesis_head(chain)
            first, last = min(times), max(times)
            head = ledger_head(prev_head, seq, root, len(rows), first, last)
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
            )
    finally:
        if not root_task.done():
            root_task.cancel()
    return Sealed(chain, seq, batch_id, len(rows), head)
