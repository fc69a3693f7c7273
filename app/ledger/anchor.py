"""Verification anchored outside the database: the newest checkpoint of each chain that the log's
key signed and a quorum of its witnesses cosigned.

Candidates come from wherever a copy is kept (the witnesses' state, the checkpoint files
outside the database, the database's own table, a file an auditor gives); none is believed for
where it was found, only for its signatures. The newest valid one per chain is the anchor, and
the log in the database must still hold it:
- log_shorter_than_checkpoint: the chain's log has fewer leaves than the checkpoint (a cut tail,
  wiped tables);
- checkpoint_root_mismatch: the log's root at the checkpoint's size differs (its prefix was
  rewritten, a fork);
- checkpoint_entry_mismatch: the ledger entry at that size is not the one the checkpoint names
  (its seq and head);
- checkpoint_fork: two checkpoints of one size with different roots, both cosigned.
The verdict is "intact" only when nothing broke and every chain that has entries is anchored;
with nothing broken and a chain without a cosigned checkpoint it is "not anchored".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.core.timefmt import format_timestamp
from app.ledger.checkpoints import chain_of, entry_facts, log_keys
from app.ledger.logstore import MissingTile, log_root, newest_size
from app.ledger.notes import (
    Checkpoint,
    NoteError,
    NoteSignature,
    VerifierKey,
    cosignature_timestamp,
    cosigned_by,
    format_note,
    open_checkpoint,
    parse_checkpoint,
    parse_note,
)
from app.ledger.sql import ENTRY_AT, ENTRY_OF_SIZE
from app.ledger.verify import Finding, Report
from app.ledger.witnessing import parse_witnesses

INTACT = "intact"
BROKEN = "broken"
NOT_ANCHORED = "not anchored"


@dataclass(frozen=True, slots=True)
class AnchorPolicy:
    """What makes a checkpoint an anchor: signed by a ledger public key under the chain's
    origin, cosigned by `quorum` of the witness keys."""

    log_origin: str
    public_keys: str
    witnesses: tuple[VerifierKey, ...]
    quorum: int

    @classmethod
    def of(cls, log_origin: str, public_keys: str, witnesses: str, quorum: int) -> AnchorPolicy:
        keys = tuple(w.key for w in parse_witnesses(witnesses))
        return cls(log_origin, public_keys, keys, quorum if keys else 1)


@dataclass(frozen=True, slots=True)
class Anchor:
    chain: int
    checkpoint: Checkpoint
    witnesses: tuple[str, ...]
    cosigned_at: int  # the newest cosignature's time, POSIX seconds
    sources: tuple[str, ...]
    # The signatures that verified: the log's, then the policy's witnesses' (of every copy).
    signatures: tuple[NoteSignature, ...] = ()

    @property
    def note(self) -> str:
        """The checkpoint as a note with every verified signature (what a bundle carries)."""
        return format_note(self.checkpoint.text, self.signatures)

    def as_dict(self) -> dict[str, Any]:
        facts = entry_facts(self.checkpoint)
        return {
            "chain": self.chain,
            "origin": self.checkpoint.origin,
            "size": self.checkpoint.size,
            "root": self.checkpoint.root_hash.hex(),
            "seq": facts.seq if facts else None,
            "sealed_at": format_timestamp(facts.sealed_at) if facts else None,
            "cosigned_at": format_timestamp(datetime.fromtimestamp(self.cosigned_at, UTC)),
            "witnesses": list(self.witnesses),
            "sources": list(self.sources),
        }


def open_anchor(policy: AnchorPolicy, source: str, note: str) -> Anchor:
    """The checkpoint a note holds, signed by the log's key, with the witnesses (of the
    policy's) whose cosignatures verify; NoteError says why it is none. The quorum is judged
    once the copies of one checkpoint are joined (choose_anchors)."""
    checkpoint = parse_checkpoint(parse_note(note)[0])
    chain = chain_of(policy.log_origin, checkpoint.origin)
    if chain is None:
        raise NoteError(f"{checkpoint.origin!r} is not a chain of {policy.log_origin!r}")
    keys = log_keys(policy.log_origin, chain, policy.public_keys)
    if not keys:
        raise NoteError("no ledger public key to check the log's signature with")
    checkpoint, opened = open_checkpoint(note, checkpoint.origin, (*keys, *policy.witnesses))
    signers = {(k.name, k.key_id) for k in keys}
    if not any((s.name, s.key_id) in signers for s in opened.verified):
        raise NoteError(f"size {checkpoint.size} of chain {chain} is not signed by the log's key")
    cosignatures = cosigned_by(opened, policy.witnesses)
    names = tuple(sorted({s.name for s in cosignatures}))
    newest = max((cosignature_timestamp(s) for s in cosignatures), default=0)
    logs = tuple(s for s in opened.verified if (s.name, s.key_id) in signers)
    return Anchor(chain, checkpoint, names, newest, (source,), (*logs, *cosignatures))


@dataclass(slots=True)
class Anchors:
    by_chain: dict[int, Anchor] = field(default_factory=dict)
    forks: list[Finding] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why a candidate is not an anchor


def _joined(one: Anchor, other: Anchor) -> Anchor:
    return Anchor(
        one.chain,
        one.checkpoint,
        tuple(sorted({*one.witnesses, *other.witnesses})),
        max(one.cosigned_at, other.cosigned_at),
        tuple(dict.fromkeys((*one.sources, *other.sources))),
        tuple(dict.fromkeys((*one.signatures, *other.signatures))),
    )


def choose_anchors(policy: AnchorPolicy, candidates: Iterable[tuple[str, str]]) -> Anchors:
    """The newest anchor of each chain among (source, note) candidates. Copies of one checkpoint
    join their witnesses (each witness's state holds its own cosignature only), then a quorum
    makes an anchor; two signed checkpoints of one size and different roots are a
    checkpoint_fork (the log's key signed both)."""
    found = Anchors()
    seen: dict[tuple[int, int], Anchor] = {}
    for source, note in candidates:
        try:
            anchor = open_anchor(policy, source, note)
        except (NoteError, ValueError) as exc:
            found.refused.append(f"{source}: {exc}")
            continue
        key = (anchor.chain, anchor.checkpoint.size)
        other = seen.get(key)
        if other is None:
            seen[key] = anchor
        elif other.checkpoint.root_hash == anchor.checkpoint.root_hash:
            seen[key] = _joined(other, anchor)
        else:
            found.forks.append(
                Finding(
                    "checkpoint_fork",
                    None,
                    None,
                    f"size {key[1]}: root {other.checkpoint.root_hash.hex()} "
                    f"({', '.join(other.sources)}) and {anchor.checkpoint.root_hash.hex()} "
                    f"({source}), both signed with the log's key",
                    anchor.chain,
                )
            )
    for (chain, size), anchor in sorted(seen.items()):
        if not policy.witnesses or len(anchor.witnesses) < policy.quorum:
            found.refused.append(
                f"{', '.join(anchor.sources)}: size {size} of chain {chain} is cosigned by "
                f"{len(anchor.witnesses)} of the {policy.quorum} witnesses a quorum takes"
            )
            continue
        found.by_chain[chain] = anchor  # sorted: the newest of a chain comes last
    return found


async def check_anchor(conn: asyncpg.Connection, anchor: Anchor, size: int) -> list[Finding]:
    """What the chain's log of `size` leaves in the database says against its anchor (nothing:
    it holds it). The log's root is read from its tiles; a full verification also checks that
    the tiles are what the events give (tile_mismatch)."""
    chain, checkpoint = anchor.chain, anchor.checkpoint
    named = f"the checkpoint cosigned by {', '.join(anchor.witnesses)}"
    if size < checkpoint.size:
        return [
            Finding(
                "log_shorter_than_checkpoint",
                None,
                None,
                f"the log has {size} leaves, {named} has {checkpoint.size}",
                chain,
            )
        ]
    try:
        root = await log_root(conn, chain, checkpoint.size)
    except MissingTile as exc:
        detail = f"the log cannot give its root at size {checkpoint.size}: {exc}"
        return [Finding("checkpoint_root_mismatch", None, None, detail, chain)]
    if root != checkpoint.root_hash:
        return [
            Finding(
                "checkpoint_root_mismatch",
                None,
                None,
                f"root at size {checkpoint.size} is {root.hex()}, {named} has "
                f"{checkpoint.root_hash.hex()}",
                chain,
            )
        ]
    facts = entry_facts(checkpoint)
    if facts is None:
        return []
    entry = await conn.fetchrow(ENTRY_OF_SIZE, chain, checkpoint.size)
    if entry is None or entry["seq"] != facts.seq or bytes(entry["head"]) != facts.head:
        shown = "no entry" if entry is None else f"entry seq {entry['seq']}"
        return [
            Finding(
                "checkpoint_entry_mismatch",
                facts.seq,
                None,
                f"size {checkpoint.size}: {shown}, {named} names seq {facts.seq} and its head",
                chain,
            )
        ]
    return []


async def anchor_report(
    conn: asyncpg.Connection,
    report: Report,
    anchors: Anchors,
    chains: Iterable[int],
    *,
    stale_after_s: float | None = None,
) -> None:
    """Check the report's log against the anchors and say what it was anchored to:
    `report.anchors` (each anchor, newest per chain, with how many leaves the log holds past
    it) and `report.unanchored` (the chains among `chains` that have entries and no anchor, or
    whose anchor is stale: leaves past it sealed more than `stale_after_s` ago, which no quorum
    has cosigned since)."""
    sizes = {c: await newest_size(conn, c) for c in {*chains, *anchors.by_chain}}
    found = list(anchors.forks)
    for chain, anchor in anchors.by_chain.items():
        found.extend(await check_anchor(conn, anchor, sizes[chain]))
    if report.scoped:  # sizes and roots tell every tenant's volume: named, not detailed
        found = [replace(f, detail="") for f in found]
    report.findings.extend(found)
    shown = []
    stale: set[int] = set()
    for chain, anchor in sorted(anchors.by_chain.items()):
        after = max(0, sizes[chain] - anchor.checkpoint.size)
        is_stale = False
        if after and stale_after_s is not None:
            since = await _first_sealed_after(conn, anchor)
            waited = (datetime.now(UTC) - since).total_seconds() if since else 0.0
            is_stale = waited > stale_after_s
        if is_stale:
            stale.add(chain)
        shown.append({**anchor.as_dict(), "leaves_after": after, "stale": bool(is_stale)})
    report.anchors = shown
    bare = {c for c in chains if c not in anchors.by_chain and sizes[c] > 0}
    report.unanchored = sorted(bare | stale)


async def _first_sealed_after(conn: asyncpg.Connection, anchor: Anchor) -> datetime | None:
    """When the first entry past the anchor was sealed (None: not known)."""
    facts = entry_facts(anchor.checkpoint)
    if facts is None:
        return None
    entry = await conn.fetchrow(ENTRY_AT, anchor.chain, facts.seq + 1)
    return None if entry is None else entry["sealed_at"]
