"""Inclusion proofs for single events, and checkpoints of the chain head for keeping elsewhere.

A proof lets a third party check, with only SHA-256 (and HMAC or Ed25519 for the signatures),
that an event is leaf `leaf_index` of the batch sealed as entry `batch_seq` of chain `chain`
(one chain per stream shard; chain 0's first prev_head is 32 zero bytes, chain c's is
SHA-256("audit-ledger-genesis-v1" || c as 4 bytes big-endian)):

    leaf = SHA-256(0x00 || event_hash)
    fold the audit path into the leaf as RFC 9162 section 2.1.3.2 says -> must equal merkle_root
    head = SHA-256("audit-ledger-head-v1" || prev_head || seq (8 bytes BE) || merkle_root
                   || event_count (8 bytes BE) || first, last event time (8 bytes BE signed
                   microseconds since 1970))                   -> must equal head
    signature = HMAC-SHA256(key, head); public_signature = Ed25519 over head

An entry sealed into the chain's transparency log (head_version 2) has the head
SHA-256("audit-ledger-head-v2" || the same fields || tree_size (8 bytes BE) || tree_root); one of
head_version 3 SHA-256("audit-ledger-head-v3" || the v2 fields || sealed_at (8 bytes BE signed
microseconds since 1970)). A proof
also carries `log`: the event's position in its chain's log and an RFC 9162 inclusion proof
against the tree size and root of the chain's newest entry, whose head commits to them (v2),
and `log.checkpoint` once a checkpoint covers the event: the chain's newest checkpoint note (C2SP
tlog-checkpoint signed with the Ed25519 ledger key, with the witnesses' cosignatures) and an
inclusion proof against the root it signs, which the log's and the witnesses' public keys check
with nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.core.config import SigningKey
from app.core.timefmt import format_timestamp, parse_timestamp
from app.ledger.chain import entry_head
from app.ledger.checkpoints import newest_served
from app.ledger.hashing import UnknownSigningKeyError, verify_signature
from app.ledger.logstore import MissingTile, leaf_position, log_inclusion_proof
from app.ledger.merkle import audit_path, leaf_hash
from app.ledger.notes import NoteError, parse_checkpoint, parse_note
from app.ledger.prune import unpack_leaves
from app.ledger.rotation import KeyPositions
from app.ledger.signing import verify_with_any
from app.ledger.sql import (
    BATCH_LEAVES,
    ENTRY_AT,
    ENTRY_OF_BATCH,
    EVENT_ROW,
    NEWEST_OF_CHAIN,
    NEWEST_OF_EACH_CHAIN,
    PROOF_ROW,
    PRUNED_LEAVES,
)
from app.ledger.tlog import ProofError, root_from_inclusion_proof, verify_inclusion
from app.ledger.verify import Finding, Verifier, fetch_by_batch, retirements_before


class DamagedBatch(Exception):
    """The event's batch no longer has exactly the leaves its ledger entry counts: no proof can
    be given (verification names what happened)."""


def ledger_entry_json(entry: Any) -> dict[str, Any]:
    public = entry["public_signature"]
    tree_root = entry.get("tree_root")
    return {
        "chain": entry["chain"],
        "seq": entry["seq"],
        "event_count": entry["event_count"],
        "merkle_root": bytes(entry["merkle_root"]).hex(),
        "first_timestamp": format_timestamp(entry["first_timestamp"]),
        "last_timestamp": format_timestamp(entry["last_timestamp"]),
        "prev_head": bytes(entry["prev_head"]).hex(),
        "head": bytes(entry["head"]).hex(),
        "key_id": entry["key_id"],
        "signature": bytes(entry["signature"]).hex(),
        "public_signature": bytes(public).hex() if public is not None else None,
        "sealed_at": format_timestamp(entry["sealed_at"]),
        "head_version": entry.get("head_version") or 1,
        "tree_size": entry.get("tree_size"),
        "tree_root": bytes(tree_root).hex() if tree_root is not None else None,
    }


async def event_proof(
    conn: asyncpg.Connection, organization_id: str, event_id: uuid.UUID
) -> dict[str, Any] | None:
    """The inclusion proof of a sealed event of this organization, or None."""
    row = await conn.fetchrow(PROOF_ROW, event_id, organization_id)
    if row is None:
        return None
    return await _proof(conn, row["event_id"], bytes(row["hash"]), row["leaf_index"], row)


async def _proof(
    conn: asyncpg.Connection,
    event_id: uuid.UUID,
    event_hash: bytes,
    index: int | None,
    entry: Mapping[str, Any],
) -> dict[str, Any]:
    """The proof that `event_hash` is leaf `index` of the batch sealed as `entry`."""
    found = await fetch_by_batch(conn, BATCH_LEAVES, entry["batch_id"])
    by_index = {r["leaf_index"]: bytes(r["hash"]) for r in found}
    damaged = len(by_index) != len(found)  # two rows claim one leaf
    # A batch sealed across a month boundary may have lost its older leaves to retention: their
    # hashes were recorded when they were pruned (the root and the signed head still decide).
    for leaf, digest in unpack_leaves(await conn.fetchval(PRUNED_LEAVES, entry["batch_id"])):
        damaged = damaged or leaf in by_index
        by_index.setdefault(leaf, digest)
    count = entry["event_count"]
    if damaged or index is None or sorted(by_index) != list(range(count)):
        where = f"seq {entry['seq']} of chain {entry['chain']}"
        raise DamagedBatch(f"the batch sealed as {where} no longer matches its entry")
    leaves = [by_index[i] for i in range(count)]
    return {
        "event_id": str(event_id),
        "event_hash": event_hash.hex(),
        "chain": entry["chain"],
        "batch_seq": entry["seq"],
        "leaf_index": index,
        "tree_size": count,
        "audit_path": [h.hex() for h in audit_path(leaves, index)],
        "ledger_entry": ledger_entry_json(entry),
        "log": await _log_proof(conn, entry, index),
    }


async def _log_proof(
    conn: asyncpg.Connection, entry: Mapping[str, Any], index: int
) -> dict[str, Any]:
    """The event's position in its chain's log and its RFC 9162 inclusion proof against the
    chain's newest entry (read from the tiles, O(log n) hashes)."""
    chain = entry["chain"]
    newest = await conn.fetchrow(NEWEST_OF_CHAIN, chain)
    position = leaf_position(entry, index)
    size = newest["tree_size"]
    try:
        path = await log_inclusion_proof(conn, chain, position, size)
    except (MissingTile, ValueError) as exc:
        raise DamagedBatch(f"the log of chain {chain} cannot prove leaf {position}: {exc}") from exc
    return {
        "chain": chain,
        "leaf_index": position,
        "tree_size": size,
        "tree_root": bytes(newest["tree_root"]).hex(),
        "inclusion_proof": [h.hex() for h in path],
        "ledger_entry": ledger_entry_json(newest),
        "checkpoint": await _checkpoint_proof(conn, chain, position, size),
    }


async def _checkpoint_proof(
    conn: asyncpg.Connection, chain: int, position: int, log_size: int
) -> dict[str, Any] | None:
    """The chain's newest checkpoint (the signed note with the witnesses' cosignatures so far)
    and the leaf's inclusion proof against it; None while no checkpoint covers the leaf yet.
    Whoever holds the log's key and the witnesses' keys can check it with nothing else."""
    found = await newest_served(conn, chain, log_size, ())
    if found is None or found[0] <= position:
        return None
    size, note = found
    try:
        path = await log_inclusion_proof(conn, chain, position, size)
    except (MissingTile, ValueError) as exc:
        raise DamagedBatch(f"the log of chain {chain} cannot prove leaf {position}: {exc}") from exc
    return {"note": note, "tree_size": size, "inclusion_proof": [h.hex() for h in path]}


# What an event's findings mean, in the words the console's badge and the API's proof use.
EVENT_PROBLEMS = {
    "event_hash_mismatch": "field changed since sealing: hash mismatch (its fields no longer "
    "give the hash that was sealed)",
    "event_signature_invalid": "signature invalid: the hash is not signed by the key it names",
    "unknown_signing_key": "signed with a key this service does not hold",
    "retired_key_used": "signed with a retired key",
}

# What the findings of the ledger entry holding the event mean, in the same words.
ENTRY_PROBLEMS = {
    "ledger_signature_invalid": "ledger entry signature invalid: its head is not signed by the "
    "key it names",
    "ledger_public_signature_invalid": "ledger entry public signature invalid: its head carries "
    "no valid signature of the configured public key",
    "unknown_signing_key": "ledger entry signed with a key this service does not hold",
    "retired_key_used": "ledger entry signed with a retired key",
}

NOT_SEALED = "not in the ledger: no ledger entry holds this event"

NO_KEYS = "no usable verification keys configured"


@dataclass(frozen=True, slots=True)
class EventVerdict:
    """What verification says of one event: its inclusion proof (None when no ledger entry
    holds it) and each thing that failed, in words (none: verified); `unchecked` says why
    nothing could be checked ('' when it was)."""

    proof: dict[str, Any] | None
    problems: list[str]
    unchecked: str = ""

    @property
    def verified(self) -> bool:
        return not self.problems and not self.unchecked


async def verify_event(
    conn: asyncpg.Connection,
    verifier: Verifier | None,
    organization_id: str,
    event_id: uuid.UUID,
) -> EventVerdict | None:
    """Verify one event as a verification of its range would: the stored fields recompute to
    the stored hash, the hash carries the named key's signature, and the inclusion proof leads
    from it to the root of a ledger entry whose head recomputes and whose signatures check as
    verify checks them (Verifier.entry_signature_findings). The event is the one
    GET /events/{id} shows (the earliest, should its id be reused). None: no such event.
    Raises DamagedBatch when its batch no longer has the leaves its entry counts. Without a
    verifier (no keys to check with) the proof alone, for whoever holds the keys to check."""
    row = await conn.fetchrow(EVENT_ROW, event_id, organization_id)
    if row is None:
        return None
    batch_id = row["batch_id"]
    entry = None if batch_id is None else await conn.fetchrow(ENTRY_OF_BATCH, batch_id)
    unchecked = NO_KEYS if verifier is None else ""
    sealed_at = None if entry is None else entry["sealed_at"]
    checked = [] if verifier is None else verifier.check_event(row, None, sealed_at)
    problems = [_in_words(f) for f in checked]
    if entry is None:
        return EventVerdict(None, [*problems, NOT_SEALED], unchecked)
    proof = await _proof(conn, row["event_id"], bytes(row["hash"]), row["leaf_index"], entry)
    if verifier is None:
        return EventVerdict(proof, [], unchecked)
    failed = check_proof(proof)
    problems += [failed] if failed else []
    # The entry's signatures as verify checks them: every key it checks, retirement too, by the
    # configured time and by the retirements its chain's log recorded before it.
    signatures = verifier.entry_signature_findings(entry)
    positions = KeyPositions()
    for retirement in await retirements_before(conn, verifier, entry["chain"], entry["seq"]):
        positions.take(retirement)
    for finding in verifier.position_findings(entry, [row], positions):
        if finding.event_id is None:
            signatures.append(finding)
        else:
            problems.append(_in_words(finding))
    return EventVerdict(proof, problems + [_in_words(f, ENTRY_PROBLEMS) for f in signatures])


def _in_words(finding: Finding, meanings: Mapping[str, str] = EVENT_PROBLEMS) -> str:
    words = meanings.get(finding.check, finding.check.replace("_", " "))
    named = finding.check in {"unknown_signing_key", "retired_key_used"}  # the detail names it
    return f"{words} ({finding.detail})" if named and finding.detail else words


async def export_checkpoint(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """The newest signed entry of every chain, to be kept outside the database. The top-level
    fields are the first chain's newest entry (as a single-chain checkpoint has them); `chains`
    lists every chain's."""
    entries = [ledger_entry_json(e) for e in await conn.fetch(NEWEST_OF_EACH_CHAIN)]
    if not entries:
        return None
    return {
        "kind": "audit-ledger-checkpoint-v1",
        "exported_at": format_timestamp(datetime.now(UTC)),
        **entries[0],
        "chains": entries,
    }


def _checkpoint_signed(
    checkpoint: dict[str, Any], head: bytes, keys: dict[str, SigningKey], public_key: str
) -> bool:
    """By HMAC when this verifier holds the keys, else by the Ed25519 public key(s)."""
    if keys:
        try:
            signature = bytes.fromhex(checkpoint["signature"])
            return verify_signature(head, signature, checkpoint["key_id"], keys)
        except UnknownSigningKeyError:
            return False
    public = checkpoint.get("public_signature")
    if not isinstance(public, str):
        return False
    return verify_with_any(public_key, head, bytes.fromhex(public))


async def check_checkpoint(
    conn: asyncpg.Connection,
    checkpoint: dict[str, Any],
    keys: dict[str, SigningKey],
    public_key: str = "",
) -> list[Finding]:
    """Every chain still holds the checkpoint's entry of it, with the same head."""
    found: list[Finding] = []
    for point in checkpoint.get("chains") or [checkpoint]:
        chain, seq = int(point.get("chain") or 0), int(point["seq"])
        head = bytes.fromhex(point["head"])
        if not _checkpoint_signed(point, head, keys, public_key):
            detail = "the checkpoint's signature fails"
            found.append(Finding("checkpoint_invalid", seq, None, detail, chain))
            continue
        entry = await conn.fetchrow(ENTRY_AT, chain, seq)
        if entry is None:
            detail = "the chain ends before it"
            found.append(Finding("checkpoint_not_extended", seq, None, detail, chain))
        elif bytes(entry["head"]) != head:
            detail = "the chain has another head there"
            found.append(Finding("checkpoint_not_extended", seq, None, detail, chain))
    return found


def check_proof(proof: Mapping[str, Any]) -> str | None:
    """Check an inclusion proof as a third party would: the path leads from the event hash to
    the entry's root and the entry's head commits to that root (by head version); then the log
    proof leads from the event's leaf to the tree root of the log's entry, whose head (v2, v3)
    commits to it. Whether the heads are signed is the entries' own check
    (Verifier.entry_signature_findings). None when it all holds; else what failed."""
    entry = proof["ledger_entry"]
    if proof["tree_size"] != entry["event_count"]:
        return "the tree size is not the entry's event count"
    try:
        root = root_from_inclusion_proof(
            proof["leaf_index"],
            proof["tree_size"],
            leaf_hash(bytes.fromhex(proof["event_hash"])),
            [bytes.fromhex(step) for step in proof["audit_path"]],
        )
    except ValueError:
        return "the audit path does not fit the tree"
    if root.hex() != entry["merkle_root"]:
        return "the audit path does not lead to the entry's Merkle root"
    failed = _check_entry_json(entry)
    if failed or "log" not in proof:  # a proof given before the log: the batch's alone
        return failed
    return _check_log_proof(proof)


def _check_log_proof(proof: Mapping[str, Any]) -> str | None:
    log, batch = proof["log"], proof["ledger_entry"]
    tree = log["ledger_entry"]
    if batch.get("tree_size") is not None:
        position = batch["tree_size"] - batch["event_count"] + proof["leaf_index"]
        if log["leaf_index"] != position:
            return "the log position is not the event's place in its batch's entry"
    if log["tree_size"] != tree.get("tree_size") or log["tree_root"] != tree.get("tree_root"):
        return "the log proof is not against its entry's tree"
    try:
        verify_inclusion(
            log["leaf_index"],
            log["tree_size"],
            leaf_hash(bytes.fromhex(proof["event_hash"])),
            [bytes.fromhex(step) for step in log["inclusion_proof"]],
            bytes.fromhex(log["tree_root"]),
        )
    except (ProofError, ValueError):
        return "the log inclusion proof does not lead to the entry's tree root"
    failed = _check_checkpoint_proof(proof)
    if failed:
        return failed
    if tree["seq"] == batch["seq"] and tree["chain"] == batch["chain"]:
        return None  # the very entry checked above
    return _check_entry_json(tree)


def _check_checkpoint_proof(proof: Mapping[str, Any]) -> str | None:
    """The inclusion proof against the checkpoint leads to the root the note signs (its
    signatures are for whoever holds the keys to check)."""
    log = proof["log"]
    given = log.get("checkpoint")
    if given is None:
        return None
    try:
        checkpoint = parse_checkpoint(parse_note(given["note"])[0])
        if checkpoint.size != given["tree_size"]:
            return "the checkpoint proof is not of the checkpoint's size"
        verify_inclusion(
            log["leaf_index"],
            checkpoint.size,
            leaf_hash(bytes.fromhex(proof["event_hash"])),
            [bytes.fromhex(step) for step in given["inclusion_proof"]],
            checkpoint.root_hash,
        )
    except (ProofError, NoteError, ValueError):
        return "the inclusion proof does not lead to the checkpoint's root"
    return None


def _check_entry_json(entry: Mapping[str, Any]) -> str | None:
    """A ledger entry as a proof carries it: its head recomputes from its fields (by head
    version)."""
    try:
        head = entry_head(
            {
                **entry,
                "prev_head": bytes.fromhex(entry["prev_head"]),
                "merkle_root": bytes.fromhex(entry["merkle_root"]),
                "first_timestamp": parse_timestamp(entry["first_timestamp"]),
                "last_timestamp": parse_timestamp(entry["last_timestamp"]),
                "tree_root": bytes.fromhex(entry.get("tree_root") or ""),
                "sealed_at": parse_timestamp(entry["sealed_at"]),
            }
        )
    except ValueError:
        return "the entry's head version is not known"
    if head.hex() != entry["head"]:
        return "the entry's head does not commit to its root"
    return None
