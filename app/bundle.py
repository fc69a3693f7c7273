"""Offline bundles: events of a time range with the ledger entries that seal them, verifiable
with no database (NDJSON, one object per line):

    {"bundle": {"kind": "audit-bundle-v1", "start", "end", "organization", "created_at"}}
    {"ledger": {seq, event_count, merkle_root, first/last_timestamp, prev_head, head, key_id,
                signature, public_signature}}                      every seq from first to last
    {"event": {the stored fields, hash, signature, key_id, batch_seq, leaf_index}}
    {"leaf": {"batch_seq", "leaf_index", "hash"}}     the other leaves of those batches (events
                                                      outside the range or organization: hash only)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from app.integrity import format_timestamp, merkle_root, record_from_row
from app.proofs import ledger_entry_json
from app.verify import Finding, Report, Verifier

EVENTS = """
SELECT a.*, l.seq AS batch_seq FROM audit_log a JOIN audit_ledger l USING (batch_id)
WHERE a."timestamp" >= $1 AND a."timestamp" < $2 AND ($3::text IS NULL OR a.organization_id = $3)
ORDER BY l.seq, a.leaf_index
"""
LEAVES = """
SELECT l.seq, a.leaf_index, a.hash, a.event_id, a."timestamp", a.organization_id
FROM audit_log a JOIN audit_ledger l USING (batch_id)
WHERE l.seq >= $1 AND l.seq <= $2 ORDER BY l.seq, a.leaf_index
"""


def _line(kind: str, value: Any) -> bytes:
    return orjson.dumps({kind: value}, option=orjson.OPT_SORT_KEYS) + b"\n"


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **record_from_row(row),
        "hash": bytes(row["hash"]).hex(),
        "signature": bytes(row["signature"]).hex(),
        "key_id": row["key_id"],
        "batch_seq": row["batch_seq"],
        "leaf_index": row["leaf_index"],
    }


async def export_bundle(
    conn: asyncpg.Connection, start: datetime, end: datetime, organization: str | None
) -> AsyncIterator[bytes]:
    yield _line(
        "bundle",
        {
            "kind": "audit-bundle-v1",
            "start": format_timestamp(start),
            "end": format_timestamp(end),
            "organization": organization,
            "created_at": format_timestamp(datetime.now(UTC)),
        },
    )
    events = await conn.fetch(EVENTS, start, end, organization)
    if not events:
        return
    first, last = events[0]["batch_seq"], events[-1]["batch_seq"]
    for entry in await conn.fetch(
        "SELECT * FROM audit_ledger WHERE seq >= $1 AND seq <= $2 ORDER BY seq", first, last
    ):
        yield _line("ledger", ledger_entry_json(entry))
    exported = {(e["batch_seq"], e["leaf_index"]) for e in events}
    for event in events:
        yield _line("event", event_json(event))
    for leaf in await conn.fetch(LEAVES, first, last):
        if (leaf["seq"], leaf["leaf_index"]) not in exported:
            yield _line(
                "leaf",
                {
                    "batch_seq": leaf["seq"],
                    "leaf_index": leaf["leaf_index"],
                    "hash": bytes(leaf["hash"]).hex(),
                },
            )


def _entry_row(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger line in the shape the Verifier reads from the database."""
    row = dict(entry)
    for name in ("merkle_root", "prev_head", "head", "signature", "public_signature"):
        row[name] = bytes.fromhex(entry[name]) if entry.get(name) else None
    for name in ("first_timestamp", "last_timestamp"):
        row[name] = datetime.fromisoformat(entry[name])
    return row


def _event_row(event: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(event)
    row["hash"] = bytes.fromhex(event["hash"])
    row["signature"] = bytes.fromhex(event["signature"])
    row["timestamp"] = datetime.fromisoformat(event["timestamp"])
    row["received_at"] = datetime.fromisoformat(event["received_at"])
    return row


def verify_bundle(lines: Iterable[bytes], verifier: Verifier) -> Report:
    entries: list[dict[str, Any]] = []
    leaves: dict[int, dict[int, bytes]] = {}
    report = Report(0, 0)
    for raw in lines:
        if not raw.strip():
            continue
        ((kind, value),) = orjson.loads(raw).items()
        if kind == "ledger":
            entries.append(_entry_row(value))
        elif kind == "event":
            row = _event_row(value)
            report.events += 1
            report.findings += verifier.check_event(row, value["batch_seq"])
            leaves.setdefault(value["batch_seq"], {})[value["leaf_index"]] = row["hash"]
        elif kind == "leaf":
            leaves.setdefault(value["batch_seq"], {})[value["leaf_index"]] = bytes.fromhex(
                value["hash"]
            )
    prev: dict[str, Any] | None = None
    for entry in entries:
        if prev is not None and entry["seq"] != prev["seq"] + 1:
            report.findings.append(Finding("ledger_entry_missing", entry["seq"]))
        report.findings += verifier.check_entry(entry, prev)
        report.findings += _check_leaves(entry, leaves.pop(entry["seq"], {}))
        report.entries += 1
        prev = entry
    for seq in leaves:
        report.findings.append(Finding("event_unsealed", seq, None, "no ledger entry for it"))
    if entries:
        report.from_seq, report.to_seq = entries[0]["seq"], entries[-1]["seq"]
    return report


def _check_leaves(entry: Mapping[str, Any], leaves: dict[int, bytes]) -> list[Finding]:
    seq, count = entry["seq"], entry["event_count"]
    missing = [i for i in range(count) if i not in leaves]
    extra = [i for i in leaves if not 0 <= i < count]
    found = [Finding("event_missing", seq, None, f"leaf {i} of {count}") for i in missing]
    found += [Finding("event_unexpected", seq, None, f"leaf {i} of {count}") for i in extra]
    if not found and merkle_root([leaves[i] for i in range(count)]) != entry["merkle_root"]:
        found.append(Finding("merkle_root_mismatch", seq, None, "leaves give another root"))
    return found
