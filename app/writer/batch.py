"""What one batch carries: its entries, the rows built from them, and what must be dead-lettered.

Pure data work, no I/O: the writer (app.writer.writer) moves batches, this module shapes them.
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from app.core.config import SigningKey
from app.core.service_macs import ServiceMac, ServiceMacs
from app.core.timefmt import format_timestamp, parse_timestamp
from app.events.record import EventRecord
from app.ledger.hashing import content_digest, event_hash, sign_hash
from app.ledger.seal import BASE_COLUMNS, HASH_POS, EventKey, event_key
from app.queue.stream import DeadItem, Entry, Settlement

POISON_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})  # data, integrity, program limit

CONFLICT = "conflict: a stored event has this event_id and timestamp with other content"


def is_poison(exc: BaseException) -> bool:
    """The database refused the rows themselves: retrying the same rows cannot succeed."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in POISON_SQLSTATE_CLASSES
    # asyncpg's client-side encoding errors are ValueErrors.
    return isinstance(exc, ValueError | TypeError)


def describe_error(exc: BaseException) -> str:
    """What went wrong, without the values: PostgreSQL's message can quote the row (PHI)."""
    parts = [type(exc).__name__]
    if isinstance(exc, asyncpg.PostgresError):
        parts.append(f"sqlstate {exc.sqlstate}")
        for label in ("table", "column", "constraint"):
            value = getattr(exc, f"{label}_name", None)
            if value:
                parts.append(f"{label} {value}")
    return ", ".join(parts)


CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

ROW_OF = operator.itemgetter(*BASE_COLUMNS)


def _canonical_id(text: str) -> str:
    return text if CANONICAL_UUID.fullmatch(text) else str(uuid.UUID(text))


def _canonical_time(text: str, moment: datetime) -> str:
    """The canonical text of a time: the text itself when it already is (as the API queues it;
    formatting it again would add to the cost of every row), else formatted anew."""
    return text if CANONICAL_TIME.fullmatch(text) else format_timestamp(moment)


def record_row(record: EventRecord, key: SigningKey) -> tuple[Any, ...]:
    """The audit_log row for a record (BASE_COLUMNS order), hashed and signed. Times and the id
    are brought to their canonical text first, so the hash is of exactly what is stored."""
    timestamp = parse_timestamp(record["timestamp"])
    received_at = parse_timestamp(record["received_at"])
    key_id = record.get("api_key_id")
    canonical: dict[str, Any] = dict(
        record,
        event_id=_canonical_id(record["event_id"]),
        timestamp=_canonical_time(record["timestamp"], timestamp),
        received_at=_canonical_time(record["received_at"], received_at),
        api_key_id=None if key_id is None else _canonical_id(key_id),
    )
    digest = event_hash(canonical)
    details = record["details"]
    values = canonical
    values["timestamp"] = timestamp
    values["received_at"] = received_at
    values["details"] = (
        None if details is None else orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()
    )
    values["hash"] = digest
    values["signature"] = sign_hash(digest, key)
    values["key_id"] = key.key_id
    row: tuple[Any, ...] = ROW_OF(values)
    return row


@dataclass(slots=True)
class PendingRow:
    entry_index: int
    record: EventRecord
    row: tuple[Any, ...]
    dead: bool = False

    @property
    def key(self) -> EventKey:
        return event_key(self.row)

    @property
    def digest(self) -> bytes:
        digest: bytes = self.row[HASH_POS]
        return digest

    @property
    def content(self) -> bytes:
        """The content digest (app.ledger.hashing.content_digest): compared only on key
        collisions."""
        return content_digest(dict(zip(BASE_COLUMNS, self.row, strict=True)))


@dataclass(slots=True)
class BatchPlan:
    """A batch's entries, the rows they carry, the items to dead-letter, and the ledger chain
    (the stream shard the entries came from) it is sealed into."""

    entries: Sequence[Entry]
    dead_letter_mac: ServiceMac
    rows: list[PendingRow] = field(default_factory=list)
    chain: int = 0
    dead: dict[int, list[DeadItem]] = field(default_factory=dict)

    def kill(
        self,
        entry_index: int,
        error: str,
        payload: bytes,
        events: int = 1,
        organization: str = "",
        *,
        vouched: bool = True,
    ) -> None:
        """Set events aside as a dead letter; `vouched`: the API queued them (its MAC checked),
        so the item gets the writers' MAC and can be replayed."""
        key_id, mac = "", b""
        if vouched:
            key_id, mac = self.dead_letter_mac.sign(
                organization.encode(), str(events).encode(), payload
            )
        item = DeadItem(error, payload, events, organization, key_id, mac)
        self.dead.setdefault(entry_index, []).append(item)

    def kill_row(self, row: PendingRow, error: str) -> None:
        if not row.dead:
            row.dead = True
            payload = orjson.dumps(row.record)
            self.kill(row.entry_index, error, payload, organization=owner(row.record))

    def settlements(self) -> list[Settlement]:
        return [
            Settlement(entry, tuple(self.dead.get(i, ()))) for i, entry in enumerate(self.entries)
        ]

    @property
    def dead_items(self) -> int:
        return sum(len(items) for items in self.dead.values())


def owner(record: Any) -> str:
    """The organization a queued record belongs to ('' when the record does not say)."""
    organization = record.get("organization_id") if isinstance(record, dict) else None
    return organization if isinstance(organization, str) else ""


FORGED = "forged entry: its MAC does not check, the API did not queue it; nothing of it is stored"


def plan_batch(
    entries: Sequence[Entry], key: SigningKey, macs: ServiceMacs, chain: int = 0
) -> BatchPlan:
    """The rows of the entries the API vouched for; entries whose MAC fails (written to Redis
    by someone else) go to the dead-letter stream owned by no organization, never signed."""
    plan = BatchPlan(entries, macs.dead_letters, chain=chain)
    for index, entry in enumerate(entries):
        if not entry.vouched(macs.entries):
            entry.forged = True
            plan.kill(index, FORGED, entry.payload, entry.events, vouched=False)
            continue
        try:
            records = orjson.loads(entry.payload)
            if not isinstance(records, list):
                raise TypeError("entry payload is not a JSON array")
        except (orjson.JSONDecodeError, TypeError) as exc:
            plan.kill(index, f"unreadable entry: {type(exc).__name__}", entry.payload, entry.events)
            continue
        for record in records:
            try:
                plan.rows.append(PendingRow(index, record, record_row(record, key)))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                error = f"invalid record: {type(exc).__name__}"
                plan.kill(index, error, orjson.dumps(record), organization=owner(record))
    return plan


def first_of_each(plan: BatchPlan, rows: Sequence[PendingRow]) -> list[PendingRow]:
    """Live rows, one per event key: an exact repeat is dropped (stored once), a repeat with
    other content is dead-lettered as a conflict, never silently lost."""
    seen: dict[EventKey, PendingRow] = {}
    kept = []
    for row in rows:
        if row.dead:
            continue
        key = row.key
        first = seen.get(key)
        if first is None:
            seen[key] = row
            kept.append(row)
        elif first.digest != row.digest and first.content != row.content:
            plan.kill_row(row, CONFLICT)
    return kept


def chunk_entries(entries: Sequence[Entry], batch_size: int) -> list[list[Entry]]:
    """Whole entries in groups of about `batch_size` events."""
    chunks: list[list[Entry]] = [[]]
    events = 0
    for entry in entries:
        if chunks[-1] and events + entry.events > batch_size:
            chunks.append([])
            events = 0
        chunks[-1].append(entry)
        events += entry.events
    return [c for c in chunks if c]
