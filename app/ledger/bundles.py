"""Offline bundles: events of a time range with the ledger entries that seal them and what
anchors those to a checkpoint cosigned by witnesses, verifiable with no database (NDJSON, one
object per line):

    {"bundle": {"kind": "audit-bundle-v2", "start", "end", "organization", "created_at",
                "log_origin"}}
    {"witnesses": {"quorum", "vkeys": [cosignature/v1 vkey, ...]}}   the log's witnesses
    {"log_keys": {"chain", "vkeys": [Ed25519 note vkey, ...]}}        per chain: the log's key
    {"checkpoint": {"chain", "note"}}   per chain: its newest checkpoint cosigned by a quorum, as
                      a note with the log's signature and the witnesses' cosignatures
    {"ledger": {chain, seq, event_count, merkle_root, first/last_timestamp, prev_head, head,
                key_id, signature, public_signature, sealed_at, head_version, tree_size,
                tree_root}}   every seq from first to last, per chain
    {"consistency": {"chain", "seq", "old_size", "new_size", "proof": [hex, ...]}}   per
                      ledger entry whose tree_size is at most the checkpoint's: RFC 9162 proof
                      from the entry's tree to the checkpoint's (empty at equal sizes)
    {"event": {the stored fields, hash, signature, key_id, batch_chain, batch_seq, leaf_index}}
    {"leaf": {"batch_chain", "batch_seq", "leaf_index", "hash"}}   the other leaves of those
                      batches (events outside the range or organization: hash only)

A bundle of a single-chain ledger is the same with every chain 0 (a missing `chain` or
`batch_chain` reads as 0). An audit-bundle-v1 bundle has no anchoring lines: it reads the same
and is not anchored.

verify_bundle checks what verify checks of the events and entries (their findings), and the
anchoring (app.ledger.bundle_anchor), naming:
- bundle_checkpoint_invalid: a checkpoint that does not verify: not a checkpoint of the chain's
  origin, not signed by the log's key (its text altered), a cosignature by a trusted witness key
  that fails, more than one for a chain;
- bundle_checkpoint_unwitnessed: a checkpoint cosigned by fewer of the trusted witness keys (the
  bundle's, or those the auditor pins) than the quorum;
- bundle_log_key_mismatch: a log vkey that is not the chain's Ed25519 note key, or not the public
  key the auditor gives;
- bundle_consistency_invalid: a consistency proof that does not lead from the entry's tree
  (tree_size, tree_root) to the checkpoint's;
- bundle_checkpoint_entry_mismatch: the bundled entry at the checkpoint's size is not the one its
  extension lines name (seq and head).
The verdict is intact only when nothing broke and every bundled entry is anchored: proven (or
followed by one proven) consistent with a checkpoint cosigned by a quorum; the others are listed
as not anchored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from app.core.timefmt import format_timestamp
from app.ledger.anchor import Anchor, AnchorPolicy
from app.ledger.bundle_anchor import (
    ANCHOR_KINDS,
    AnchorLines,
    WitnessTrust,
    check_anchoring,
)
from app.ledger.checkpoints import log_keys
from app.ledger.hashing import record_from_row
from app.ledger.logstore import MissingTile, log_consistency_proofs
from app.ledger.merkle import merkle_root
from app.ledger.notes import VerifierKey
from app.ledger.proofs import ledger_entry_json
from app.ledger.sql import BUNDLE_ENTRIES, BUNDLE_EVENTS, BUNDLE_LEAVES
from app.ledger.verify import Finding, Report, Verifier

log = logging.getLogger(__name__)

BUNDLE_KIND = "audit-bundle-v2"

Place = tuple[int, int]  # (chain, seq) of a batch


@dataclass(frozen=True, slots=True)
class BundleAnchors:
    """What an export anchors its entries to: the log's origin and keys and its witnesses
    (`policy`), and the newest checkpoint of each chain cosigned by a quorum (`by_chain`)."""

    policy: AnchorPolicy
    by_chain: Mapping[int, Anchor]


def _line(kind: str, value: Any) -> bytes:
    return orjson.dumps({kind: value}, option=orjson.OPT_SORT_KEYS) + b"\n"


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **record_from_row(row),
        "hash": bytes(row["hash"]).hex(),
        "signature": bytes(row["signature"]).hex(),
        "key_id": row["key_id"],
        "batch_chain": row["batch_chain"],
        "batch_seq": row["batch_seq"],
        "leaf_index": row["leaf_index"],
    }


async def export_bundle(
    conn: asyncpg.Connection,
    start: datetime,
    end: datetime,
    organization: str | None,
    anchors: BundleAnchors | None = None,
) -> AsyncIterator[bytes]:
    """The bundle's lines; with `anchors`, the keys, each chain's checkpoint and the
    consistency proofs to it too (none: not anchored)."""
    policy = anchors.policy if anchors else None
    yield _line(
        "bundle",
        {
            "kind": BUNDLE_KIND,
            "start": format_timestamp(start),
            "end": format_timestamp(end),
            "organization": organization,
            "created_at": format_timestamp(datetime.now(UTC)),
            "log_origin": policy.log_origin if policy else None,
        },
    )
    events = await conn.fetch(BUNDLE_EVENTS, start, end, organization)
    spans: dict[int, tuple[int, int]] = {}  # chain -> (first, last) seq of its events
    for event in events:
        chain, seq = event["batch_chain"], event["batch_seq"]
        low, high = spans.get(chain, (seq, seq))
        spans[chain] = (min(low, seq), max(high, seq))
    if policy is not None:
        vkeys = [key.vkey for key in policy.witnesses]
        yield _line("witnesses", {"quorum": policy.quorum, "vkeys": vkeys})
    for chain, (first, last) in spans.items():
        entries = await conn.fetch(BUNDLE_ENTRIES, chain, first, last)
        async for line in _chain_lines(conn, chain, entries, anchors):
            yield line
    exported = {(e["batch_chain"], e["batch_seq"], e["leaf_index"]) for e in events}
    for event in events:
        yield _line("event", event_json(event))
    for chain, (first, last) in spans.items():
        for leaf in await conn.fetch(BUNDLE_LEAVES, chain, first, last):
            if (chain, leaf["seq"], leaf["leaf_index"]) in exported:
                continue
            value = {
                "batch_chain": chain,
                "batch_seq": leaf["seq"],
                "leaf_index": leaf["leaf_index"],
                "hash": bytes(leaf["hash"]).hex(),
            }
            yield _line("leaf", value)


async def _chain_lines(
    conn: asyncpg.Connection,
    chain: int,
    entries: list[asyncpg.Record],
    anchors: BundleAnchors | None,
) -> AsyncIterator[bytes]:
    """A chain's log keys and checkpoint, its ledger entries, and their consistency proofs."""
    anchor = anchors.by_chain.get(chain) if anchors else None
    if anchors is not None and anchors.policy.public_keys:
        keys = log_keys(anchors.policy.log_origin, chain, anchors.policy.public_keys)
        yield _line("log_keys", {"chain": chain, "vkeys": [key.vkey for key in keys]})
    if anchor is not None:
        yield _line("checkpoint", {"chain": chain, "note": anchor.note})
    for entry in entries:
        yield _line("ledger", ledger_entry_json(entry))
    if anchor is None:
        return
    for line in await _consistency(conn, chain, entries, anchor):
        yield _line("consistency", line)


async def _consistency(
    conn: asyncpg.Connection, chain: int, entries: list[asyncpg.Record], anchor: Anchor
) -> list[dict[str, Any]]:
    """A consistency line from each entry's tree to the anchor's, for the entries not past it
    (none when the log cannot give the proofs: the entries are then not anchored, and verify
    names why the log is short)."""
    size = anchor.checkpoint.size
    within = [e for e in entries if 0 < (e["tree_size"] or 0) <= size]
    try:
        proofs = await log_consistency_proofs(conn, chain, [e["tree_size"] for e in within], size)
    except (MissingTile, ValueError) as exc:
        log.warning("no consistency proofs to size %d of chain %d: %s", size, chain, exc)
        return []
    return [
        {
            "chain": chain,
            "seq": entry["seq"],
            "old_size": entry["tree_size"],
            "new_size": size,
            "proof": [step.hex() for step in proof],
        }
        for entry, proof in zip(within, proofs, strict=True)
    ]


def _entry_row(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger line in the shape the Verifier reads from the database."""
    row = dict(entry)
    for name in ("merkle_root", "prev_head", "head", "signature", "public_signature", "tree_root"):
        row[name] = bytes.fromhex(entry[name]) if entry.get(name) else None
    for name in ("first_timestamp", "last_timestamp", "sealed_at"):
        if entry.get(name) is not None:
            row[name] = datetime.fromisoformat(entry[name])
    return row


def _event_row(event: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(event)
    row["hash"] = bytes.fromhex(event["hash"])
    row["signature"] = bytes.fromhex(event["signature"])
    row["timestamp"] = datetime.fromisoformat(event["timestamp"])
    row["received_at"] = datetime.fromisoformat(event["received_at"])
    return row


@dataclass(slots=True)
class BundleReport(Report):
    """A bundle's report: the witness keys its verdict rests on, and the entries no cosigned
    checkpoint anchors (seq ranges per chain) besides what a verification reports."""

    witness_keys: WitnessTrust | None = None
    unanchored_entries: list[dict[str, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            **Report.summary(self),
            "unanchored_entries": self.unanchored_entries,
            "witness_keys": self.witness_keys.as_dict() if self.witness_keys else None,
        }


@dataclass(slots=True)
class _BundleCheck:
    verifier: Verifier
    witnesses: Sequence[VerifierKey] = ()
    quorum: int | None = None
    report: BundleReport = field(default_factory=lambda: BundleReport(0, 0))
    header: dict[str, Any] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    sealed_at: dict[Place, datetime] = field(default_factory=dict)
    leaves: dict[Place, dict[int, bytes]] = field(default_factory=dict)
    anchoring: AnchorLines = field(default_factory=AnchorLines)

    def place(self, value: Mapping[str, Any], digest: bytes) -> None:
        chain, seq, index = value.get("batch_chain") or 0, value["batch_seq"], value["leaf_index"]
        batch = self.leaves.setdefault((chain, seq), {})
        if index in batch:  # a second line for one leaf could stand in for the real one
            self.report.findings.append(
                Finding("event_unexpected", seq, None, f"leaf {index} twice", chain)
            )
        batch[index] = digest

    def read(self, kind: str, value: dict[str, Any]) -> None:
        if kind == "bundle":
            self.header = value
        elif kind == "ledger":
            entry = _entry_row(value)
            self.entries.append(entry)
            if entry.get("sealed_at") is not None:
                self.sealed_at[(entry.get("chain") or 0, entry["seq"])] = entry["sealed_at"]
        elif kind == "event":
            row = _event_row(value)
            self.report.events += 1
            seq = value["batch_seq"]
            sealed_at = self.sealed_at.get((value.get("batch_chain") or 0, seq))
            self.report.findings += self.verifier.check_event(row, seq, sealed_at)
            self.report.findings += _outside(self.header, value)
            self.place(value, row["hash"])
        elif kind == "leaf":
            self.place(value, bytes.fromhex(value["hash"]))
        elif kind in ANCHOR_KINDS:
            self.anchoring.read(kind, value)

    def finish(self) -> BundleReport:
        report = self.report
        prev: dict[int, dict[str, Any]] = {}  # chain -> its entry before
        for entry in self.entries:
            chain = entry.setdefault("chain", 0) or 0
            before = prev.get(chain)
            found: list[Finding] = []
            if before is not None and entry["seq"] != before["seq"] + 1:
                found.append(Finding("ledger_entry_missing", entry["seq"]))
            found += self.verifier.check_entry(entry, before)
            found += _check_leaves(entry, self.leaves.pop((chain, entry["seq"]), {}))
            report.findings += [replace(f, chain=chain) for f in found]
            report.entries += 1
            prev[chain] = entry
        for chain, seq in self.leaves:
            detail = "no ledger entry for it"
            report.findings.append(Finding("event_unsealed", seq, None, detail, chain))
        if self.entries:
            seqs = [e["seq"] for e in self.entries]
            report.from_seq, report.to_seq = min(seqs), max(seqs)
        self.anchor()
        return report

    def anchor(self) -> None:
        anchoring = check_anchoring(
            self.anchoring,
            self.header.get("log_origin"),
            self.entries,
            self.verifier.public_key,
            self.witnesses,
            self.quorum,
        )
        report = self.report
        report.findings += anchoring.findings
        report.anchors = anchoring.anchors
        report.unanchored = anchoring.unanchored
        report.unanchored_entries = anchoring.unanchored_entries
        report.witness_keys = anchoring.trust


def verify_bundle(
    lines: Iterable[bytes],
    verifier: Verifier,
    witnesses: Sequence[VerifierKey] = (),
    quorum: int | None = None,
) -> BundleReport:
    """Everything a bundle holds is checked; what it leaves out (as hash-only leaves) cannot be:
    a bundle proves its contents authentic and sealed, not that the range is complete. Its
    anchoring is checked with the bundle's witness keys, or `witnesses` (with `quorum`) when an
    auditor gives the keys they trust."""
    check = _BundleCheck(verifier, witnesses, quorum)
    for raw in lines:
        if raw.strip():
            ((kind, value),) = orjson.loads(raw).items()
            check.read(kind, value)
    return check.finish()


def _outside(header: Mapping[str, Any], event: Mapping[str, Any]) -> list[Finding]:
    """An event the bundle's header says it does not hold."""
    if not header:
        return [Finding("bundle_header_missing", None, event["event_id"], "")]
    org = header.get("organization")
    if (org is not None and event["organization_id"] != org) or not (
        header["start"] <= event["timestamp"] < header["end"]
    ):
        where = "outside the bundle's range or organization"
        seq, chain = event["batch_seq"], event.get("batch_chain") or 0
        return [Finding("event_unexpected", seq, event["event_id"], where, chain)]
    return []


def _check_leaves(entry: Mapping[str, Any], leaves: dict[int, bytes]) -> list[Finding]:
    seq, count = entry["seq"], entry["event_count"]
    missing = [i for i in range(count) if i not in leaves]
    extra = [i for i in leaves if not 0 <= i < count]
    found = [Finding("event_missing", seq, None, f"leaf {i} of {count}") for i in missing]
    found += [Finding("event_unexpected", seq, None, f"leaf {i} of {count}") for i in extra]
    if not found and merkle_root([leaves[i] for i in range(count)]) != entry["merkle_root"]:
        found.append(Finding("merkle_root_mismatch", seq, None, "leaves give another root"))
    return found
