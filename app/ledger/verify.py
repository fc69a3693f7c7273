"""Verification: recompute every event hash, signature, Merkle root and chain link over a range
of the ledger and name each thing that broke.

Checks, by the name a finding carries:
- ledger_entry_missing: a seq is absent from the range (an entry deleted);
- chain_link_broken: an entry's prev_head is not its predecessor's head;
- ledger_head_mismatch: an entry's head does not recompute from its own fields;
- sealed_at_decreased: an entry whose head commits to its sealed_at (v3) was sealed before the
  entry it follows (sealing never lets sealed_at decrease: it was backdated);
- head_version_decreased: an entry's head is of an older version than the one before it (what
  a newer head commits to, such as sealed_at, would escape; writers of one version at a time);
- ledger_signature_invalid / ledger_public_signature_invalid / unknown_signing_key;
- retired_key_used: an event or entry signed with a key its chain's log had retired at an
  earlier position (a key retirement event, app.ledger.rotation; the detail names its seq and
  tree size), or sealed (its entry's sealed_at) at or after the key's configured retirement;
- event_hash_mismatch: an event's stored fields no longer give its stored hash (a field changed);
- event_signature_invalid: the stored hash is not signed by the named key (a forged row);
- event_missing: a leaf position of a sealed batch has no event (an event deleted or moved);
- event_unexpected: an event claims a leaf its batch does not have (inserted or moved there);
- merkle_root_mismatch: the batch's leaves are all there but give another root (reordered,
  swapped, or re-hashed);
- event_unsealed: an event belongs to no ledger entry (inserted outside the writer);
- checkpoint_not_extended: the chain no longer holds an exported checkpoint (a cut tail);
- prune_record_invalid: a record of a retention prune does not verify (forged, altered, or its
  partition's record gone), so the events it claims were pruned count as deleted.

With stream shards there is one chain per shard (app.ledger.seal); each is walked on its own (a seq
range names one chain), every finding names its chain, and the rows that belong to no batch of
any chain are found once, at the end.

Events removed by a retention prune (app.ledger.prune) are not findings: the report lists the
pruned ranges and counts the pruned events, and a partly pruned batch's root is recomputed from
the kept events and the recorded hashes of the pruned ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg

from app.core.config import OPERATIONS_ORG, SigningKey
from app.core.timefmt import format_timestamp
from app.ledger.chain import entry_head, genesis_head
from app.ledger.hashing import (
    UnknownSigningKeyError,
    event_hash,
    record_from_row,
    stored_row_hash,
    verify_signature,
)
from app.ledger.logcheck import LogCheck, tile_extent_findings
from app.ledger.merkle import leaf_hashes, root_of_leaves
from app.ledger.prune import PrunedRange, pruned_leaves, pruned_ranges
from app.ledger.rotation import RETIREMENT_ACTION, KeyPositions, Retirement, retired_by
from app.ledger.signing import verify_with_any
from app.ledger.sql import (
    ANY_PRUNED,
    BATCHES_BEYOND,
    BY_BATCH_INDEX,
    CHAINS,
    ENTRY_AT,
    KNOWN_BATCHES,
    LEDGER_CHUNK,
    LOG_TILE_EXTENTS,
    LOG_TILES_AT,
    NEWEST_SEQ,
    NEWEST_SIZE,
    ORPHANS,
    PRUNED_BATCHES,
    RETIREMENTS_BEFORE,
    ROWS_OF_BATCHES,
    ROWS_OF_CHAIN,
    SEVERAL_CHAINS,
    UNSEALED,
)

log = logging.getLogger(__name__)

ENTRY_CHUNK = 200

MAX_LISTED_MISSING = 1000

ROWS_PER_FETCH = 20_000


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    seq: int | None = None
    event_id: str | None = None
    detail: str = ""
    chain: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "chain": self.chain,
            "seq": self.seq,
            "event_id": self.event_id,
            "detail": self.detail,
        }


MAX_KEPT_FINDINGS = 10_000


class Findings(list[Finding]):
    """Keeps the first MAX_KEPT_FINDINGS findings and counts the rest by check, so a run over a
    badly broken (or wrongly keyed) chain of millions of events keeps its memory flat."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_check: dict[str, int] = {}

    def append(self, finding: Finding) -> None:
        self.total += 1
        self.by_check[finding.check] = self.by_check.get(finding.check, 0) + 1
        if len(self) < MAX_KEPT_FINDINGS:
            super().append(finding)

    def extend(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.append(finding)

    def name_chain(self, chain: int) -> None:
        """Say which chain every finding listed here is of (a walk makes them chain-less)."""
        self[:] = [replace(finding, chain=chain) for finding in self]

    def absorb(self, other: Findings, *, skip_unplaced_prunes: bool) -> None:
        """Take another chain's findings; those `other` only counted are counted here too.
        Prune records are read by every chain's walk: with `skip_unplaced_prunes` their
        chain-less findings are not counted twice."""
        listed: dict[str, int] = {}
        for finding in other:
            listed[finding.check] = listed.get(finding.check, 0) + 1
            if skip_unplaced_prunes and finding.check == "prune_record_invalid":
                if finding.seq is None:
                    continue
            self.append(finding)
        for check, count in other.by_check.items():
            unlisted = count - listed.get(check, 0)
            self.total += unlisted
            self.by_check[check] = self.by_check.get(check, 0) + unlisted

    def __iadd__(self, findings: Iterable[Finding]) -> Findings:  # type: ignore[override,misc]
        self.extend(findings)
        return self


@dataclass(slots=True)
class Report:
    from_seq: int
    to_seq: int
    chain: int = 0
    chains: list[dict[str, Any]] = field(default_factory=list)
    entries: int = 0
    events: int = 0
    pruned_events: int = 0
    pruned_ranges: list[PrunedRange] = field(default_factory=list)
    scoped: bool = False  # one organization's: no service-wide figures
    findings: Findings = field(default_factory=Findings)
    # app.ledger.anchor: the cosigned checkpoints the log was checked against (None: not
    # anchored at all), and the chains with entries that have none.
    anchors: list[dict[str, Any]] | None = None
    unanchored: list[int] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.findings.total == 0

    @property
    def verdict(self) -> str:
        """broken (a finding), intact (none, every chain anchored), or not anchored."""
        if not self.intact:
            return "broken"
        if self.anchors and not self.unanchored:
            return "intact"
        return "not anchored"

    def summary(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "intact": self.intact,
            "anchored": [self._anchor(a) for a in self.anchors or []],
            "unanchored_chains": self.unanchored,
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
            "ledger_entries": self.entries,
            "events": self.events,
            "pruned_events": None if self.scoped else self.pruned_events,
            "pruned_ranges": [self._pruned(r) for r in self.pruned_ranges],
            "findings": self.findings.total,
            "findings_by_check": dict(self.findings.by_check),
            "findings_listed": len(self.findings),
            "chains": self.chains or [self.chain_summary()],
            "empty": self.entries == 0,
        }

    def _anchor(self, anchor: dict[str, Any]) -> dict[str, Any]:
        if not self.scoped:
            return anchor
        hidden = ("size", "root", "seq", "leaves_after")  # every tenant's volume
        return {k: v for k, v in anchor.items() if k not in hidden}

    def _pruned(self, pruned: PrunedRange) -> dict[str, Any]:
        shown = pruned.as_dict()
        if self.scoped:  # how many events and batches of every tenant: not one tenant's figure
            shown.pop("events")
            shown.pop("batches")
        return shown

    def chain_summary(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
            "ledger_entries": self.entries,
            "events": self.events,
            "findings": self.findings.total,
        }


@dataclass(frozen=True, slots=True)
class Verifier:
    """What a verification checks with: `keys` the events' HMAC keys, `ledger_keys` those of
    ledger heads and prune records, `public_key` the heads' Ed25519 key(s). With
    `organization_id` it is that organization's verification: everything is checked as in a
    whole one, but only its events are counted and named; a finding on another
    organization's event says only that."""

    keys: Mapping[str, SigningKey]
    public_key: str = ""
    organization_id: str | None = None
    check_hmac: bool = True  # off for an auditor who holds only the Ed25519 public key
    ledger_keys: Mapping[str, SigningKey] = field(default_factory=dict)
    operations_org: str = OPERATIONS_ORG  # where the service's key retirements are recorded

    @property
    def checked(self) -> dict[str, bool]:
        """Which signatures this verifier checks (a report says so beside its verdict)."""
        return {"hmac": self.check_hmac, "public_key": bool(self.public_key)}

    @property
    def scoped(self) -> bool:
        return self.organization_id is not None

    def mine(self, row: Mapping[str, Any]) -> bool:
        """The row is of the organization this verification is for (any, unscoped)."""
        return self.organization_id is None or row["organization_id"] == self.organization_id

    def event_finding(
        self, check: str, row: Mapping[str, Any], seq: int | None, detail: str
    ) -> Finding:
        if self.mine(row):
            return Finding(check, seq, str(row["event_id"]), detail)
        return Finding(check, seq, None, "an event of another organization")

    def check_entry(
        self, entry: Mapping[str, Any], prev: Mapping[str, Any] | None
    ) -> list[Finding]:
        seq = entry["seq"]
        found: list[Finding] = []
        if prev is not None and bytes(entry["prev_head"]) != bytes(prev["head"]):
            found.append(Finding("chain_link_broken", seq, None, "prev_head differs"))
        chain = entry.get("chain") or 0
        if seq == 1 and bytes(entry["prev_head"]) != genesis_head(chain):
            found.append(Finding("chain_link_broken", seq, None, "not its chain's genesis"))
        try:
            head: bytes | None = entry_head(entry)
        except ValueError as exc:  # an unknown head version
            head = None
            found.append(Finding("ledger_head_mismatch", seq, None, str(exc)))
        if head is not None and head != bytes(entry["head"]):
            found.append(Finding("ledger_head_mismatch", seq, None, "head does not recompute"))
        if prev is not None and _version_of(entry) < _version_of(prev):
            detail = f"head v{_version_of(entry)} after v{_version_of(prev)} at seq {prev['seq']}"
            found.append(Finding("head_version_decreased", seq, None, detail))
        if prev is not None and _sealed_before(entry, prev):
            detail = f"sealed at {format_timestamp(entry['sealed_at'])}, before seq " + (
                f"{prev['seq']} ({format_timestamp(prev['sealed_at'])})"
            )
            found.append(Finding("sealed_at_decreased", seq, None, detail))
        found += self.entry_signature_findings(entry)
        return found

    def entry_signature_findings(self, entry: Mapping[str, Any]) -> list[Finding]:
        """What is wrong with a ledger entry's signatures: its HMAC (by a key held, not retired
        when it sealed) and its Ed25519 signature, each checked when this verifier checks it."""
        seq, head = entry["seq"], bytes(entry["head"])
        found: list[Finding] = []
        if self.check_hmac:
            try:
                signature = bytes(entry["signature"])
                if not verify_signature(head, signature, entry["key_id"], self.ledger_keys):
                    found.append(Finding("ledger_signature_invalid", seq))
            except UnknownSigningKeyError:
                detail = f"key {entry['key_id']!r}"
                found.append(Finding("unknown_signing_key", seq, None, detail))
            retired = _retired(self.ledger_keys.get(entry["key_id"]), entry.get("sealed_at"))
            if retired:
                found.append(Finding("retired_key_used", seq, None, retired))
        if self.public_key:  # a comma list: keys of earlier periods still verify their heads
            public = entry["public_signature"]
            if public is None or not verify_with_any(self.public_key, head, bytes(public)):
                found.append(Finding("ledger_public_signature_invalid", seq))
        return found

    def signed_by_ring(self, digest: bytes, signature: bytes, key_id: str) -> bool:
        """For records only the ledger's HMAC key can vouch for (prunes): unchecked means
        untrusted."""
        return self.check_hmac and verify_signature(digest, signature, key_id, self.ledger_keys)

    def check_batch(
        self,
        entry: Mapping[str, Any],
        rows: list[Mapping[str, Any]],
        pruned: Mapping[str, Any] | None = None,
        ranges: list[PrunedRange] | None = None,
        placed: list[bytes] | None = None,
    ) -> list[Finding]:
        """The batch's rows against its entry. When its leaves are all there and give its root,
        `placed` gets their leaf hashes in leaf order (of event hashes from rows and prune
        records), for the log, which so hashes no leaf again: a batch found damaged here is
        named here, not again by the log."""
        seq, count = entry["seq"], entry["event_count"]
        found: list[Finding] = []
        leaves = self._place_leaves(seq, count, rows, found, entry.get("sealed_at"))
        clean = len(leaves) == len(rows)
        if pruned is not None:
            gone = pruned_leaves(self.signed_by_ring, entry, pruned, ranges or [])
            if gone is None:  # wholly pruned: its header was checked, nothing else is left
                return found + [
                    self.event_finding("event_unexpected", r, seq, "in a wholly pruned batch")
                    for r in rows
                ]
            clean = self._add_pruned(entry, gone, leaves, found) and clean
        absent = count - len(leaves)
        if absent > MAX_LISTED_MISSING:  # say how many, not each: count may be forged huge
            found.append(Finding("event_missing", seq, None, f"{absent} of {count} leaves absent"))
        elif absent > 0:
            for index in (i for i in range(count) if i not in leaves):
                found.append(Finding("event_missing", seq, None, f"leaf {index} of {count}"))
        if absent == 0 and clean:
            hashes = leaf_hashes([leaves[i] for i in range(count)])
            if root_of_leaves(hashes) != bytes(entry["merkle_root"]):
                found.append(Finding("merkle_root_mismatch", seq, None, "leaves give another root"))
            elif placed is not None:
                placed += hashes
        return found

    def _place_leaves(
        self,
        seq: int,
        count: int,
        rows: list[Mapping[str, Any]],
        found: list[Finding],
        sealed_at: datetime | None = None,
    ) -> dict[int, bytes]:
        """Each row's stored hash at its leaf, every row checked itself: a scoped verification
        checks the others' rows too (without naming them), since a row's organization is one
        of the fields a tamperer could change to move an event out of the caller's sight."""
        leaves: dict[int, bytes] = {}
        for row in rows:
            found += self.check_event(row, seq, sealed_at)
            index = row["leaf_index"]
            if index is None or not 0 <= index < count or index in leaves:
                where = f"leaf {index} of {count}"
                found.append(self.event_finding("event_unexpected", row, seq, where))
            else:
                leaves[index] = bytes(row["hash"])
        return leaves

    @staticmethod
    def _add_pruned(
        entry: Mapping[str, Any],
        gone: dict[int, bytes] | str,
        leaves: dict[int, bytes],
        found: list[Finding],
    ) -> bool:
        """Put the recorded hashes of a partly pruned batch's pruned leaves among its leaves;
        False when the record contradicts the rows (then no root is computed)."""
        seq, count = entry["seq"], entry["event_count"]
        if isinstance(gone, str):  # untrusted: its leaves stay missing
            found.append(Finding("prune_record_invalid", seq, None, gone))
            return True
        consistent = True
        for index, digest in gone.items():
            if index in leaves or not 0 <= index < count:
                detail = f"pruned leaf {index} of {count} is also present or out of range"
                found.append(Finding("prune_record_invalid", seq, None, detail))
                consistent = False
            leaves.setdefault(index, digest)
        return consistent

    def check_event(
        self, row: Mapping[str, Any], seq: int | None, sealed_at: datetime | None = None
    ) -> list[Finding]:
        """An event's hash and signature; with the `sealed_at` of the entry sealing it, whether
        its key was retired (by the configured time) when it was sealed: the time the event
        itself carries (received_at) is its writer's to choose."""
        stored = bytes(row["hash"])
        found = []
        if stored_row_hash(row) != stored:
            found.append(self.event_finding("event_hash_mismatch", row, seq, "fields changed"))
        if not self.check_hmac:
            return found
        try:
            signature = bytes(row["signature"])
            if not verify_signature(stored, signature, row["key_id"], self.keys):
                found.append(self.event_finding("event_signature_invalid", row, seq, ""))
        except UnknownSigningKeyError:
            detail = f"key {row['key_id']!r}"
            found.append(self.event_finding("unknown_signing_key", row, seq, detail))
        retired = _retired(self.keys.get(row["key_id"]), sealed_at)
        if retired:
            found.append(self.event_finding("retired_key_used", row, seq, retired))
        return found

    def retirement_in(
        self, row: Mapping[str, Any], entry: Mapping[str, Any], positions: KeyPositions
    ) -> Retirement | None:
        """The key retirement `row` (an event of `entry`'s batch) records, if it is one whose
        hash and signature check and whose signer was retired neither by the log before it
        (`positions`) nor by its configured time when its entry was sealed."""
        named = retired_by(row)
        if named is None or not self.check_hmac:
            return None
        key = self.keys.get(row["key_id"])
        stored = bytes(row["hash"])
        if key is None or event_hash(record_from_row(row)) != stored:
            return None
        if not verify_signature(stored, bytes(row["signature"]), key.key_id, self.keys):
            return None
        if positions.of("events", key.key_id) or _retired(key, entry.get("sealed_at")):
            return None
        ring, key_id = named
        return Retirement(ring, key_id, entry["seq"], entry["tree_size"], str(row["event_id"]))

    def position_findings(
        self,
        entry: Mapping[str, Any],
        rows: list[Mapping[str, Any]] | None,
        positions: KeyPositions,
    ) -> list[Finding]:
        """The entry's signature and its events' by keys the log retired before it."""
        if not self.check_hmac:
            return []
        seq, found = entry["seq"], []
        retirement = positions.of("ledger", entry["key_id"])
        if retirement is not None:
            found.append(Finding("retired_key_used", seq, None, retirement.describe()))
        if positions.retired["events"]:
            for row in rows or ():
                retirement = positions.of("events", row["key_id"])
                if retirement is not None:
                    detail = retirement.describe()
                    found.append(self.event_finding("retired_key_used", row, seq, detail))
        return found


def _version_of(entry: Mapping[str, Any]) -> int:
    return int(entry.get("head_version") or 1)


def _sealed_before(entry: Mapping[str, Any], prev: Mapping[str, Any]) -> bool:
    """A v3 entry (its head commits to sealed_at) sealed before the entry it follows: sealing
    never lets that happen. Older entries' sealed_at is the time their transaction began, which
    a batch committed after another may precede."""
    if (entry.get("head_version") or 1) < 3 or prev.get("sealed_at") is None:
        return False
    return bool(entry["sealed_at"] < prev["sealed_at"])


def _retired(key: SigningKey | None, signed_at: datetime | None) -> str:
    """What is wrong when `key` signed at `signed_at`, after its retirement ('' if nothing)."""
    if key is None or key.retired_at is None or signed_at is None:
        return ""
    if signed_at < key.retired_at:
        return ""
    return f"key {key.key_id!r} signed at {format_timestamp(signed_at)}, retired at " + (
        format_timestamp(key.retired_at)
    )


Progress = Callable[[Report], None]

Batches = list[tuple[asyncpg.Record, list[asyncpg.Record] | None, asyncpg.Record | None]]


def _by_events(entries: list[asyncpg.Record]) -> list[list[asyncpg.Record]]:
    """Consecutive entries holding about ROWS_PER_FETCH events together: memory stays flat."""
    parts: list[list[asyncpg.Record]] = [[]]
    events = 0
    for entry in entries:
        if parts[-1] and events + entry["event_count"] > ROWS_PER_FETCH:
            parts.append([])
            events = 0
        parts[-1].append(entry)
        events += entry["event_count"]
    return parts


async def _ledger_entries(
    conn: asyncpg.Connection, from_seq: int, to_seq: int, chain: int
) -> AsyncIterator[list[asyncpg.Record]]:
    cursor = from_seq
    while cursor <= to_seq:
        chunk = await conn.fetch(LEDGER_CHUNK, cursor, to_seq, ENTRY_CHUNK, chain)
        if not chunk:
            return
        yield chunk
        cursor = chunk[-1]["seq"] + 1


async def verify_range(
    conn: asyncpg.Connection,
    verifier: Verifier,
    from_seq: int = 1,
    to_seq: int | None = None,
    progress: Progress | None = None,
    *,
    times: tuple[datetime, datetime] | None = None,
    chain: int = 0,
) -> Report:
    """Verify entries from_seq..to_seq (to the newest when None) of one chain with their
    batches.

    With `times`, the whole chain's entries are checked (cheap: no events) and the events of
    those entries whose signed time span overlaps [start, end); so neither deleting a month's
    entries nor re-dating one can shrink what is checked. A full run (no range) also finds
    events that claim no batch or one the ledger does not have, unless other chains exist
    (verify_chains looks for those once, for all chains). A range from 1 to the head (or
    beyond) is a full run."""
    shared = await several_chains(conn)
    newest = await conn.fetchval(NEWEST_SEQ, chain) or 0
    if times is not None:
        from_seq, to_seq = 1, None
    last = newest if to_seq is None else to_seq
    report = Report(from_seq, last, chain=chain, scoped=verifier.scoped)
    whole = from_seq == 1 and (to_seq is None or to_seq >= newest)
    walk = _Walk(verifier, report, full=whole, times=times)
    walk.chain, walk.shared = chain, shared
    report.pruned_ranges, forged = await pruned_ranges(conn, verifier.signed_by_ring)
    for name in forged:
        report.findings.append(Finding("prune_record_invalid", None, None, f"prune of {name}"))
    walk.any_pruned = bool(await conn.fetchval(ANY_PRUNED))
    walk.prev = await conn.fetchrow(ENTRY_AT, chain, from_seq - 1)
    if walk.prev is None and from_seq > 1:
        report.findings.append(Finding("ledger_entry_missing", from_seq - 1, None, "predecessor"))
    walk.expected = from_seq
    walk.log = LogCheck.after(walk.prev)
    if from_seq > 1 or times is not None:  # retirements in batches the walk will not read
        walk.retirements = await retirements_before(conn, verifier, chain, last + 1)
    await walk.along(conn, from_seq, last, progress)
    await walk.compare_tiles(conn, final=True)
    if whole:
        await walk.check_tile_extent(conn)
    if walk.expected <= last:
        report.findings.append(
            Finding("ledger_entry_missing", walk.expected, None, f"seq {walk.expected}..{last}")
        )
    if walk.full and not shared:
        if times is None:
            await walk.fetch_unknown_beyond(conn)
        for row in filter(verifier.mine, await conn.fetch(UNSEALED)):
            report.findings.append(verifier.event_finding("event_unsealed", row, None, "no batch"))
    await walk.settle_leftovers(conn)
    report.findings.name_chain(chain)
    return report


async def retirements_before(
    conn: asyncpg.Connection, verifier: Verifier, chain: int, seq: int
) -> list[Retirement]:
    """The key retirements sealed into `chain` before entry `seq`, in seq order, each checked as
    a walk along the chain from its start checks it (found through the index of the operations
    organization's actions, without reading the batches around them)."""
    if not verifier.check_hmac:
        return []
    rows = await conn.fetch(
        RETIREMENTS_BEFORE, verifier.operations_org, RETIREMENT_ACTION, chain, seq
    )
    positions, found = KeyPositions(), []
    for _, batch in itertools.groupby(rows, key=lambda row: row["seq"]):
        taken = [verifier.retirement_in(row, row, positions) for row in batch]
        for retirement in filter(None, taken):  # from the next entry on, as in a walk
            positions.take(retirement)
            found.append(retirement)
    return found


async def fetch_by_batch(conn: asyncpg.Connection, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of a few batches, read through the batch index. Without statistics (autovacuum off,
    no ANALYZE since the table grew) the planner guesses a batch-id range matches a large part
    of the table and scans all of it, once per read: a pass over a whole chain then reads the
    table as many times as it makes reads. The index is always the right way in here."""
    async with conn.transaction():
        await conn.execute(BY_BATCH_INDEX)
        return list(await conn.fetch(sql, *args))


async def several_chains(conn: asyncpg.Connection) -> bool:
    """Whether the ledger has chains besides chain 0 (the stream was sharded)."""
    return bool(await conn.fetchval(SEVERAL_CHAINS))


async def chain_ids(conn: asyncpg.Connection) -> list[int]:
    """The ledger's chains (chain 0 alone when it is empty)."""
    return [r[0] for r in await conn.fetch(CHAINS)] or [0]


async def verify_chains(
    conn: asyncpg.Connection,
    verifier: Verifier,
    progress: Progress | None = None,
    *,
    times: tuple[datetime, datetime] | None = None,
) -> Report:
    """Verify every chain whole (or, with `times`, every chain's events of that time range).
    One chain: exactly verify_range. Several: each walked alone, then the rows of no batch of
    any chain are found by one query (or, for a time range, the rows of no batch at all)."""
    chains = await chain_ids(conn)
    if chains == [0]:
        return await verify_range(conn, verifier, 1, None, progress, times=times)
    total = Report(1, 0, scoped=verifier.scoped)

    def along(part: Report) -> None:  # progress over all chains so far
        if progress is not None:
            progress(
                Report(
                    1, 0, entries=total.entries + part.entries, events=total.events + part.events
                )
            )

    for chain in chains:
        part = await verify_range(conn, verifier, 1, None, along, times=times, chain=chain)
        total.to_seq = max(total.to_seq, part.to_seq)
        total.entries += part.entries
        total.events += part.events
        total.pruned_events += part.pruned_events
        total.pruned_ranges = part.pruned_ranges
        total.chains.append(part.chain_summary())
        total.findings.absorb(part.findings, skip_unplaced_prunes=bool(chain))
    for row in filter(verifier.mine, await conn.fetch(UNSEALED if times else ORPHANS)):
        total.findings.append(verifier.event_finding("event_unsealed", row, None, "no batch"))
    return total


@dataclass(slots=True)
class _Walk:
    """The state of one pass along the chain.

    Batch ids come from a sequence when a batch starts and seqs when it commits, so a batch can
    have a lower id than one sealed before it. Rows are therefore fetched by id ranges and held
    until the entry they belong to comes along; whatever is left at the end belongs to a batch
    sealed after the pass began, or outside the checked range (fine), or to none (a finding)."""

    verifier: Verifier
    report: Report
    full: bool
    times: tuple[datetime, datetime] | None = None
    prev: asyncpg.Record | None = None
    expected: int = 1
    next_low: int = 1
    held: dict[int, list[asyncpg.Record]] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    any_pruned: bool = False
    chain: int = 0
    shared: bool = False
    log: LogCheck = field(default_factory=LogCheck)
    keys: KeyPositions = field(default_factory=KeyPositions)  # retired by the log so far
    retirements: list[Retirement] = field(default_factory=list)  # read ahead, taken in seq order

    def wanted(self, entry: asyncpg.Record) -> bool:
        """Whether this entry's events are checked (its header always is)."""
        if self.times is None:
            return True
        start, end = self.times
        return bool(entry["last_timestamp"] >= start and entry["first_timestamp"] < end)

    async def along(
        self, conn: asyncpg.Connection, first: int, last: int, progress: Progress | None
    ) -> None:
        """Check entries first..last, reading each part while the one before is hashed."""
        checking: asyncio.Future[None] | None = None
        async for chunk in _ledger_entries(conn, first, last, self.chain):
            for part in _by_events(chunk):
                batches = await self.prepare(conn, part)
                if checking is not None:
                    await checking
                    await self.compare_tiles(conn)
                    if progress:
                        progress(self.report)
                checking = asyncio.ensure_future(asyncio.to_thread(self.check, batches))
        if checking is not None:
            await checking
            await self.compare_tiles(conn)
            if progress:
                progress(self.report)

    async def prepare(self, conn: asyncpg.Connection, entries: list[asyncpg.Record]) -> Batches:
        """The entries with their rows (None: header only), read from the database."""
        ids = [e["batch_id"] for e in entries if self.wanted(e)]
        pruned: dict[int, asyncpg.Record] = {}
        if ids:
            high = max(ids)
            low = self.next_low if self.full and self.times is None else min(ids)
            if high >= low:
                await self.fetch(conn, low, high)
            if self.any_pruned:
                pruned = {r["batch_id"]: r for r in await conn.fetch(PRUNED_BATCHES, ids)}
        return [
            (
                e,
                self.held.pop(e["batch_id"], []) if self.wanted(e) else None,
                pruned.get(e["batch_id"]),
            )
            for e in entries
        ]

    def check(self, batches: Batches) -> None:
        """Hashing is CPU work: it runs in a thread, off the event loop (an API keeps serving)."""
        ranges = self.report.pruned_ranges
        for entry, rows, pruned in batches:
            if entry["seq"] != self.expected:
                gap = f"seq {self.expected}..{entry['seq'] - 1}"
                self.report.findings.append(
                    Finding("ledger_entry_missing", entry["seq"], None, gap)
                )
                self.log.restart(None)  # the gap is named: the log goes on from this entry
            self.report.findings += self.verifier.check_entry(entry, self.prev)
            self.check_key_positions(entry, rows)
            counted = not self.verifier.scoped  # scoped: the entries holding its events
            placed: list[bytes] = []
            if rows is not None:
                found = self.verifier.check_batch(entry, rows, pruned, ranges, placed)
                self.report.findings += found
                mine = sum(map(self.verifier.mine, rows)) if self.verifier.scoped else len(rows)
                self.report.events += mine
                counted = counted or mine > 0
                if not self.verifier.scoped:
                    self.report.pruned_events += pruned["pruned_events"] if pruned else 0
                self.done.add(entry["batch_id"])
            self.report.entries += counted
            self.check_log(entry, placed, pruned)
            self.prev, self.expected = entry, entry["seq"] + 1
        self.log.take_slices(final=False)

    def check_key_positions(self, entry: asyncpg.Record, rows: list[asyncpg.Record] | None) -> None:
        """Keys the log retired before this entry sign nothing in it; the retirements it
        records take effect from the next entry on."""
        while self.retirements and self.retirements[0].seq < entry["seq"]:
            self.keys.take(self.retirements.pop(0))
        self.report.findings += self.verifier.position_findings(entry, rows, self.keys)
        recorded = [r for r in rows or () if r["action"] == RETIREMENT_ACTION]
        found = [self.verifier.retirement_in(r, entry, self.keys) for r in recorded]
        for retirement in filter(None, found):
            self.retirements.insert(0, retirement)  # taken before the next entry

    def check_log(
        self, entry: asyncpg.Record, placed: list[bytes], pruned: asyncpg.Record | None
    ) -> None:
        """The entry's tree fields against the log recomputed from the events in sealed order
        (`placed`: the batch's leaf hashes, when check_batch found them all and its root)."""
        leaves = placed if len(placed) == entry["event_count"] else None
        whole = pruned is not None and pruned["leaves"] is None
        for check, detail in self.log.check_entry(entry, leaves, whole):
            self.report.findings.append(Finding(check, entry["seq"], None, detail))

    async def compare_tiles(self, conn: asyncpg.Connection, final: bool = False) -> None:
        """The tiles against the hashes recomputed since the last comparison, in one read."""
        slices = self.log.take_slices(final)
        if not slices:
            return
        wanted = sorted({(s.level, s.index) for s in slices})
        rows = await conn.fetch(
            LOG_TILES_AT, self.chain, [w[0] for w in wanted], [w[1] for w in wanted]
        )
        stored = {(r["level"], r["idx"]): bytes(r["hashes"]) for r in rows}
        for piece in slices:
            wrong = piece.mismatch(stored.get((piece.level, piece.index)))
            if wrong:
                self.report.findings.append(Finding("log_tile_mismatch", None, None, wrong))
        slices.clear()

    async def check_tile_extent(self, conn: asyncpg.Connection) -> None:
        """After a whole chain: no tile holds more, and no tile or level is there, beyond the
        log of the chain's newest entry (read with the tiles, so a batch sealed meanwhile is
        counted)."""
        extents = await conn.fetch(LOG_TILE_EXTENTS, self.chain)
        size = extents[0]["size"] if extents else await conn.fetchval(NEWEST_SIZE, self.chain)
        for check, detail in tile_extent_findings(size or 0, extents):
            self.report.findings.append(Finding(check, None, None, detail))

    async def fetch(self, conn: asyncpg.Connection, low: int, high: int) -> None:
        """Hold the rows with batch ids in [low, high] not checked yet."""
        if self.full and self.times is None:
            low = max(low, self.next_low)
        skip = self.done | self.held.keys()  # checked already, or held whole from a read before
        if self.shared:
            rows = await fetch_by_batch(conn, ROWS_OF_CHAIN, low, high, self.chain)
        else:
            rows = await fetch_by_batch(conn, ROWS_OF_BATCHES, low, high)
        for row in rows:
            if row["batch_id"] not in skip:
                self.held.setdefault(row["batch_id"], []).append(row)
        self.next_low = max(self.next_low, high + 1)

    async def fetch_unknown_beyond(self, conn: asyncpg.Connection) -> None:
        """Rows past the last id read whose batch has no ledger entry (batches sealed while
        this pass ran are left alone, unread)."""
        ids = [r[0] for r in await conn.fetch(BATCHES_BEYOND, self.next_low)]
        known = {r[0] for r in await conn.fetch(KNOWN_BATCHES, ids)}
        for batch_id in ids:
            if batch_id not in known:
                await self.fetch(conn, batch_id, batch_id)

    async def settle_leftovers(self, conn: asyncpg.Connection) -> None:
        """Rows of batches this pass did not verify: sealed later or out of range, or of no
        batch at all."""
        if not self.held:
            return
        known = {r[0] for r in await conn.fetch(KNOWN_BATCHES, list(self.held))}
        for batch_id, rows in self.held.items():
            if batch_id in known:
                continue
            for row in filter(self.verifier.mine, rows):
                finding = self.verifier.event_finding("event_unsealed", row, None, "unknown batch")
                self.report.findings.append(finding)
                self.report.events += 1
        self.held.clear()
