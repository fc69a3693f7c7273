"""What someone who owns the database and holds signing keys could append to a chain: a batch of
events and its ledger entry, written with plain SQL, each hash and signature computed from the
documented formats (docs/tamper-evidence.md) rather than by the service's sealing code."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.core.config import SigningKey
from app.ledger.logstore import pack_frontier, tile_appends, unpack_frontier
from app.ledger.merkle import leaf_hash, merkle_root
from app.ledger.tlog import append_leaves, frontier_root
from app.store.models import AUDIT_COLUMNS

BASE_COLUMNS = AUDIT_COLUMNS[:-2]  # a row as app.writer.batch.record_row makes it


def _micros(moment: datetime) -> bytes:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros.to_bytes(8, "big", signed=True)


def _names(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def forged_head(entry: dict[str, Any]) -> bytes:
    """The head of an entry of `head_version` 2 or 3, from the documented layout."""
    fields = (
        entry["prev_head"]
        + entry["seq"].to_bytes(8, "big")
        + entry["merkle_root"]
        + entry["event_count"].to_bytes(8, "big")
        + _micros(entry["first_timestamp"])
        + _micros(entry["last_timestamp"])
        + entry["tree_size"].to_bytes(8, "big")
        + entry["tree_root"]
    )
    if entry["head_version"] == 2:
        return hashlib.sha256(b"audit-ledger-head-v2" + fields).digest()
    if entry["head_version"] == 3:
        return hashlib.sha256(
            b"audit-ledger-head-v3" + fields + _micros(entry["sealed_at"])
        ).digest()
    raise ValueError(f"no forging of head version {entry['head_version']}")


async def append_forged_batch(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[Any, ...]],
    ledger_key: SigningKey,
    sealed_at: datetime,
    chain: int = 0,
) -> int:
    """Append `rows` (signed audit_log rows, BASE_COLUMNS order) as the next batch of `chain`:
    its events, its tiles and a ledger entry that links to the newest one, with the newest
    entry's head version, `sealed_at` as given and its head signed with `ledger_key`. Returns
    the entry's seq."""
    newest = await conn.fetchrow(
        "SELECT * FROM audit_ledger WHERE chain = $1 ORDER BY seq DESC LIMIT 1", chain
    )
    batch_id = await conn.fetchval("SELECT nextval('audit_batch_id_seq')")
    digests = [bytes(row[BASE_COLUMNS.index("hash")]) for row in rows]
    times = [row[BASE_COLUMNS.index("timestamp")] for row in rows]
    before = unpack_frontier(newest["tree_size"], newest["frontier"])
    frontier, nodes = append_leaves(before, [leaf_hash(d) for d in digests])
    tiles = tile_appends(nodes)
    entry: dict[str, Any] = {
        "chain": chain,
        "seq": newest["seq"] + 1,
        "batch_id": batch_id,
        "event_count": len(rows),
        "merkle_root": merkle_root(digests),
        "first_timestamp": min(times),
        "last_timestamp": max(times),
        "prev_head": bytes(newest["head"]),
        "key_id": ledger_key.key_id,
        "sealed_at": sealed_at,
        "tree_size": frontier.size,
        "tree_root": frontier_root(frontier),
        "frontier": pack_frontier(frontier),
        "head_version": newest["head_version"],
    }
    entry["head"] = forged_head(entry)
    entry["signature"] = hmac.new(ledger_key.secret, entry["head"], hashlib.sha256).digest()
    columns = [*BASE_COLUMNS, "batch_id", "leaf_index"]
    values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    async with conn.transaction():
        for index, row in enumerate(rows):
            await conn.execute(
                f"INSERT INTO audit_log ({_names(columns)}) VALUES ({values})",
                *row,
                batch_id,
                index,
            )
        for level, idx, hashes in zip(tiles.levels, tiles.indexes, tiles.hashes, strict=True):
            await conn.execute(
                """INSERT INTO audit_log_tiles AS t (chain, level, idx, hashes)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (chain, level, idx) DO UPDATE SET hashes = t.hashes || $4""",
                chain,
                level,
                idx,
                hashes,
            )
        names = list(entry)
        await conn.execute(
            f"INSERT INTO audit_ledger ({_names(names)}) "
            f"VALUES ({', '.join(f'${n}' for n in range(1, len(names) + 1))})",
            *entry.values(),
        )
    seq: int = entry["seq"]
    return seq
