"""Retention: drop whole monthly partitions past the retention period, leaving the ledger whole.

A prune keeps what verification needs to tell it from a deletion: a signed record of the
partition (name, time range, events, batches) and, for every batch the partition held, a signed
row saying how many of its events went. A batch wholly inside the partition is gone as a whole;
one that also has events in kept partitions (a batch sealed across a month boundary) keeps the
event hashes of its pruned leaves, so its Merkle root still recomputes and its other events stay
provable. Ledger entries are never removed: the chain verifies end to end after any prune.

Each partition is pruned in one transaction: read what it holds, write the records, detach and
drop it. A partition holding rows of no ledger entry is refused (those rows are a verification
finding; dropping them would destroy the evidence).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.core.config import SigningKey
from app.core.timefmt import epoch_micros
from app.ledger.hashing import sign_hash
from app.ledger.sql import (
    BATCHES_IN,
    COUNT_ROWS,
    DETACH_PARTITION,
    DROP_PARTITION,
    INSERT_PRUNE,
    LEAVES_IN,
    LOCK_PARTITION,
    LOCK_TIMEOUT_IS,
    PARTITIONS,
    PRUNES,
    UPSERT_PRUNED_BATCH,
)

PRUNE_DOMAIN = b"audit-prune-v1"

PRUNED_BATCH_DOMAIN = b"audit-pruned-batch-v1"

LEAF = struct.Struct(">I32s")  # leaf index, event hash


LOCK_TIMEOUT = "10s"


class PruneRefused(Exception):
    """A partition cannot be pruned safely; the message says why."""


def cutoff(months: int, now: datetime | None = None) -> datetime:
    """The moment `months` months before now: partitions ending at or before it are pruned."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    month_index = now.year * 12 + now.month - 1 - months
    year, month = divmod(month_index, 12)
    day = min(now.day, 28)
    return now.replace(year=year, month=month + 1, day=day)


def prune_digest(
    name: str, start: datetime, end: datetime, events: int, batches: int, at: datetime
) -> bytes:
    return hashlib.sha256(
        PRUNE_DOMAIN
        + struct.pack(">H", len(name.encode()))
        + name.encode()
        + struct.pack(
            ">qqqqq", epoch_micros(start), epoch_micros(end), events, batches, epoch_micros(at)
        )
    ).digest()


def pruned_batch_digest(batch_id: int, pruned_events: int, leaves: bytes | None) -> bytes:
    body = hashlib.sha256(leaves).digest() if leaves is not None else bytes(32)
    whole = b"\x01" if leaves is None else b"\x00"
    return hashlib.sha256(
        PRUNED_BATCH_DOMAIN + struct.pack(">qq", batch_id, pruned_events) + whole + body
    ).digest()


def pack_leaves(leaves: dict[int, bytes]) -> bytes:
    return b"".join(LEAF.pack(index, leaves[index]) for index in sorted(leaves))


def unpack_leaves(blob: bytes | None) -> Iterator[tuple[int, bytes]]:
    if blob:
        yield from LEAF.iter_unpack(bytes(blob))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    range_start: datetime
    range_end: datetime


async def partitions_past(conn: asyncpg.Connection, before: datetime) -> list[Partition]:
    """Monthly partitions whose whole range ends at or before `before`, oldest first."""
    rows = await conn.fetch(PARTITIONS)
    return [
        Partition(r["name"], r["range_start"], r["range_end"])
        for r in rows
        if r["range_end"] is not None and r["range_end"] <= before
    ]


async def count_rows(conn: asyncpg.Connection, part: Partition) -> int:
    table = quote_ident(part.name)
    return int(await conn.fetchval(COUNT_ROWS.format(table=table)))


async def _pruned_batch_rows(
    conn: asyncpg.Connection, table: str, key: SigningKey
) -> tuple[list[tuple[Any, ...]], int]:
    """The audit_pruned_batches rows for the partition's batches, and its event count."""
    out: list[tuple[Any, ...]] = []
    events = 0
    for b in await conn.fetch(BATCHES_IN.format(table=table)):
        if b["batch_id"] is None or b["event_count"] is None:
            raise PruneRefused(
                f"{table} holds {b['events']} events of no ledger entry: run verify and resolve "
                "that first (pruning would destroy the evidence)"
            )
        events += b["events"]
        total = b["events"] + (b["pruned_events"] or 0)
        if total == b["event_count"]:
            leaves = None  # the whole batch is gone now
        else:
            kept = dict(unpack_leaves(b["leaves"]))
            for row in await conn.fetch(LEAVES_IN.format(table=table), b["batch_id"]):
                kept[row["leaf_index"]] = bytes(row["hash"])
            leaves = pack_leaves(kept)
        digest = pruned_batch_digest(b["batch_id"], total, leaves)
        out.append((b["batch_id"], total, leaves, key.key_id, sign_hash(digest, key)))
    return out, events


async def prune_partition(
    conn: asyncpg.Connection, part: Partition, key: SigningKey
) -> dict[str, Any]:
    """Record, detach and drop one partition, in one transaction."""
    started = time.monotonic()
    table = quote_ident(part.name)
    async with conn.transaction():
        await conn.execute(LOCK_TIMEOUT_IS.format(timeout=LOCK_TIMEOUT))
        await conn.execute(LOCK_PARTITION.format(table=table))  # no new rows meanwhile
        batches, events = await _pruned_batch_rows(conn, table, key)
        at = datetime.now(UTC)
        digest = prune_digest(part.name, part.range_start, part.range_end, events, len(batches), at)
        await conn.fetchval(
            INSERT_PRUNE,
            part.name,
            part.range_start,
            part.range_end,
            events,
            len(batches),
            at,
            key.key_id,
            sign_hash(digest, key),
        )
        await conn.executemany(UPSERT_PRUNED_BATCH, batches)
        await conn.execute(DETACH_PARTITION.format(table=table))
        await conn.execute(DROP_PARTITION.format(table=table))
    return {
        "partition": part.name,
        "range_start": part.range_start.isoformat(),
        "range_end": part.range_end.isoformat(),
        "events": events,
        "batches": len(batches),
        "partial_batches": sum(1 for b in batches if b[2] is not None),
        "seconds": round(time.monotonic() - started, 2),
    }


Signed = Callable[[bytes, bytes, str], bool]  # digest, signature, key id -> it checks out


@dataclass(frozen=True, slots=True)
class PrunedRange:
    partition: str
    start: datetime
    end: datetime
    events: int
    batches: int
    pruned_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "events": self.events,
            "batches": self.batches,
            "pruned_at": self.pruned_at.isoformat(),
        }

    def digest(self) -> bytes:
        return prune_digest(
            self.partition, self.start, self.end, self.events, self.batches, self.pruned_at
        )

    def overlaps(self, first: datetime, last: datetime) -> bool:
        return self.start <= last and first < self.end


async def pruned_ranges(
    conn: asyncpg.Connection, signed: Signed
) -> tuple[list[PrunedRange], list[str]]:
    """The recorded prunes whose signature checks out, and the names of those that do not."""
    good: list[PrunedRange] = []
    bad: list[str] = []
    for r in await conn.fetch(PRUNES):
        recorded = PrunedRange(
            r["partition_name"],
            r["range_start"],
            r["range_end"],
            r["event_count"],
            r["batch_count"],
            r["pruned_at"],
        )
        if _checks(signed, recorded.digest(), r):
            good.append(recorded)
        else:
            bad.append(r["partition_name"])
    return good, bad


def _checks(signed: Signed, digest: bytes, row: Mapping[str, Any]) -> bool:
    try:
        return signed(digest, bytes(row["signature"]), row["key_id"])
    except LookupError:  # a key the ring does not hold
        return False


def pruned_leaves(
    signed: Signed,
    entry: Mapping[str, Any],
    pruned: Mapping[str, Any],
    ranges: Sequence[PrunedRange],
) -> dict[int, bytes] | str | None:
    """The event hashes of a batch's pruned leaves (None: the whole batch was pruned), or why
    the record of its pruning cannot be trusted."""
    digest = pruned_batch_digest(pruned["batch_id"], pruned["pruned_events"], pruned["leaves"])
    if not _checks(signed, digest, pruned):
        return "the record of its pruning is not signed by a known key"
    if not any(r.overlaps(entry["first_timestamp"], entry["last_timestamp"]) for r in ranges):
        return "no recorded prune covers its time span"
    if pruned["leaves"] is None:
        if pruned["pruned_events"] != entry["event_count"]:
            return "recorded as wholly pruned with another event count"
        return None
    return dict(unpack_leaves(pruned["leaves"]))
