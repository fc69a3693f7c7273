"""What anchors an offline bundle (app.ledger.bundles), checked with nothing but the bundle.

Per chain the bundle carries the newest checkpoint cosigned by a quorum of witnesses, and a
consistency proof from each bundled entry's tree to it. The checkpoint must be signed by the
log's key (the bundle's vkey, which must be the Ed25519 public key the auditor gives when one is
given) under the chain's origin, and cosigned by a quorum of the witness keys (the bundle's own,
or those the auditor pins, overriding them). Each proof must show, by RFC 9162 2.1.4.2, that the
entry's tree (its tree_size and tree_root, to which its v2 head commits) is a prefix of the
checkpoint's. An entry so proven anchors itself and every entry before it in the bundle (its head
commits to theirs through prev_head); the entries past the last one proven are not anchored.
The entry at the checkpoint's size, when bundled, must be the one its extension lines name.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.ledger.anchor import Anchor, AnchorPolicy, open_anchor
from app.ledger.checkpoints import entry_facts, origin_of
from app.ledger.notes import (
    COSIGNATURE_V1,
    ED25519,
    Checkpoint,
    NoteError,
    VerifierKey,
    parse_verifier_key,
)
from app.ledger.signing import raw_key
from app.ledger.tlog import ProofError, verify_consistency
from app.ledger.verify import Finding

BUNDLE_SOURCE = "bundle"
PINNED_SOURCE = "the auditor (--witnesses or AUDIT_WITNESSES)"

# The lines of a bundle this module reads (app.ledger.bundles reads the others).
ANCHOR_KINDS = frozenset({"witnesses", "log_keys", "checkpoint", "consistency"})


def parse_witness_keys(text: str) -> tuple[VerifierKey, ...]:
    """`<vkey>,...` of cosignature/v1 keys (verify-bundle --witnesses). ValueError names the
    one that is wrong."""
    keys: list[VerifierKey] = []
    for vkey in filter(None, (part.strip() for part in text.split(","))):
        try:
            key = parse_verifier_key(vkey)
        except NoteError as exc:
            raise ValueError(f"witness key {vkey!r}: {exc}") from exc
        if key.signature_type != COSIGNATURE_V1:
            raise ValueError(f"witness key {vkey!r} is not a cosignature/v1 key")
        if key in keys:
            raise ValueError(f"witness key {vkey!r} is named twice")
        keys.append(key)
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class WitnessTrust:
    """The witness keys and quorum a bundle's verdict rests on, and where they came from."""

    keys: tuple[VerifierKey, ...]
    quorum: int
    source: str  # BUNDLE_SOURCE or PINNED_SOURCE

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.source, "quorum": self.quorum, "vkeys": [k.vkey for k in self.keys]}


@dataclass(slots=True)
class AnchorLines:
    """The anchoring lines of a bundle, as read."""

    witnesses: list[Mapping[str, Any]] = field(default_factory=list)
    log_keys: dict[int, list[str]] = field(default_factory=dict)
    checkpoints: dict[int, list[str]] = field(default_factory=dict)
    consistency: dict[int, list[Mapping[str, Any]]] = field(default_factory=dict)

    def read(self, kind: str, value: Mapping[str, Any]) -> None:
        if kind == "witnesses":
            self.witnesses.append(value)
            return
        chain = value.get("chain") or 0
        if kind == "log_keys":
            self.log_keys.setdefault(chain, []).extend(value.get("vkeys") or [])
        elif kind == "checkpoint":
            self.checkpoints.setdefault(chain, []).append(value.get("note") or "")
        elif kind == "consistency":
            self.consistency.setdefault(chain, []).append(value)


@dataclass(slots=True)
class Anchoring:
    """What the bundle's anchoring says: findings, the anchors (Anchor.as_dict), the chains
    with an entry not anchored and those entries as seq ranges, and the witness keys used."""

    trust: WitnessTrust
    findings: list[Finding] = field(default_factory=list)
    anchors: list[dict[str, Any]] = field(default_factory=list)
    unanchored: list[int] = field(default_factory=list)
    unanchored_entries: list[dict[str, int]] = field(default_factory=list)


def check_anchoring(
    lines: AnchorLines,
    log_origin: str | None,
    entries: Iterable[Mapping[str, Any]],
    public_key: str,
    pinned: Sequence[VerifierKey] = (),
    quorum: int | None = None,
) -> Anchoring:
    """The anchoring of a bundle's entries (rows: chain, seq, head, head_version, tree_size,
    tree_root as bytes). `public_key`: the Ed25519 key(s) the auditor gives ('' for none);
    `pinned`: the witness keys the auditor trusts (none: the bundle's), `quorum` theirs."""
    by_chain: dict[int, dict[int, Mapping[str, Any]]] = {}
    for entry in entries:
        by_chain.setdefault(entry.get("chain") or 0, {})[entry["seq"]] = entry
    result = Anchoring(_trust(lines.witnesses, pinned, quorum))
    tops: dict[int, int] = {}  # chain -> the newest seq anchored
    for chain in sorted(lines.checkpoints):
        check = _ChainCheck(chain, by_chain.get(chain, {}), result.findings)
        anchor = check.checkpoint(
            lines.checkpoints[chain],
            log_origin,
            lines.log_keys.get(chain, []),
            public_key,
            result.trust,
        )
        if anchor is None:
            continue
        witnessed = check.witnessed(anchor, result.trust)
        proven = check.consistency(anchor.checkpoint, lines.consistency.get(chain, []))
        proven |= check.named_entry(anchor.checkpoint)
        if witnessed:
            result.anchors.append(anchor.as_dict())
            tops[chain] = max(proven, default=0)
    for chain, chain_entries in sorted(by_chain.items()):
        beyond = sorted(seq for seq in chain_entries if seq > tops.get(chain, 0))
        if beyond:
            result.unanchored.append(chain)
            result.unanchored_entries += _ranges(chain, beyond)
    return result


def _trust(
    lines: list[Mapping[str, Any]], pinned: Sequence[VerifierKey], quorum: int | None
) -> WitnessTrust:
    if pinned:
        return WitnessTrust(tuple(pinned), quorum or 1, PINNED_SOURCE)
    keys: list[VerifierKey] = []
    given = 1
    for line in lines:  # one, as exported; more are read alike (they only add keys)
        keys += [k for k in _bundle_witness_keys(line.get("vkeys") or []) if k not in keys]
        said = line.get("quorum")
        given = max(given, said if isinstance(said, int) else 1)
    return WitnessTrust(tuple(keys), quorum or given, BUNDLE_SOURCE)


def _bundle_witness_keys(vkeys: Iterable[str]) -> list[VerifierKey]:
    """The bundle's witness keys that parse as cosignature/v1 keys (the others cosign nothing:
    a checkpoint without a quorum of keys that do is named unwitnessed)."""
    keys = []
    for vkey in vkeys:
        try:
            key = parse_verifier_key(vkey)
        except NoteError:
            continue
        if key.signature_type == COSIGNATURE_V1:
            keys.append(key)
    return keys


def _ranges(chain: int, seqs: list[int]) -> list[dict[str, int]]:
    """Sorted seqs as runs of consecutive ones."""
    runs: list[dict[str, int]] = []
    for seq in seqs:
        if runs and runs[-1]["to_seq"] == seq - 1:
            runs[-1]["to_seq"] = seq
        else:
            runs.append({"chain": chain, "from_seq": seq, "to_seq": seq})
    return runs


@dataclass(slots=True)
class _ChainCheck:
    chain: int
    entries: Mapping[int, Mapping[str, Any]]
    findings: list[Finding]

    def found(self, check: str, detail: str, seq: int | None = None) -> None:
        self.findings.append(Finding(check, seq, None, detail, self.chain))

    def checkpoint(
        self,
        notes: list[str],
        log_origin: str | None,
        vkeys: list[str],
        public_key: str,
        trust: WitnessTrust,
    ) -> Anchor | None:
        """The chain's checkpoint, signed by the log's key, with the trusted witnesses whose
        cosignatures verify (None: it is not, or one of theirs fails; named)."""
        if len(notes) != 1:
            self.found("bundle_checkpoint_invalid", f"{len(notes)} checkpoints of one chain")
            return None
        if not log_origin:
            self.found("bundle_checkpoint_invalid", "the bundle's header names no log origin")
            return None
        try:
            keys = self.log_keys(origin_of(log_origin, self.chain), vkeys, public_key)
        except ValueError as exc:  # the public key given is not one
            self.found("bundle_checkpoint_invalid", str(exc))
            return None
        if not keys:
            self.found("bundle_checkpoint_invalid", "no log key to check its signature with")
            return None
        policy = AnchorPolicy(log_origin, keys, trust.keys, trust.quorum)
        try:
            anchor = open_anchor(policy, BUNDLE_SOURCE, notes[0])
        except (NoteError, ValueError) as exc:
            self.found("bundle_checkpoint_invalid", str(exc))
            return None
        if anchor.chain != self.chain:
            self.found("bundle_checkpoint_invalid", f"a checkpoint of chain {anchor.chain}")
            return None
        return anchor

    def log_keys(self, origin: str, vkeys: list[str], public_key: str) -> str:
        """The Ed25519 keys (base64, comma list) to check the checkpoint's signature with: the
        auditor's own when given (each bundled vkey must be one of them), else the bundle's."""
        given = [raw_key(k, "ledger public key") for k in public_key.split(",") if k.strip()]
        taken: list[bytes] = []
        for vkey in vkeys:
            try:
                key = parse_verifier_key(vkey)
            except NoteError as exc:
                self.found("bundle_log_key_mismatch", f"{vkey!r}: {exc}")
                continue
            if key.signature_type != ED25519 or key.name != origin:
                self.found("bundle_log_key_mismatch", f"{vkey} is not a note key of {origin}")
            elif given and key.public_key not in given:
                self.found("bundle_log_key_mismatch", f"{vkey} is not the public key given")
            else:
                taken.append(key.public_key)
        return ",".join(base64.b64encode(raw).decode() for raw in given or taken)

    def witnessed(self, anchor: Anchor, trust: WitnessTrust) -> bool:
        """The checkpoint is cosigned by a quorum of the trusted witness keys."""
        if trust.keys and len(anchor.witnesses) >= trust.quorum:
            return True
        count = len(anchor.witnesses)
        self.found(
            "bundle_checkpoint_unwitnessed",
            f"size {anchor.checkpoint.size} is cosigned by {count} of the {trust.quorum} "
            f"witnesses a quorum takes (keys from {trust.source}: "
            f"{', '.join(k.vkey for k in trust.keys) or 'none'})",
        )
        return False

    def consistency(self, checkpoint: Checkpoint, proofs: list[Mapping[str, Any]]) -> set[int]:
        """The seqs of v2 (or later) entries proven to be prefixes of the checkpoint's tree."""
        proven: set[int] = set()
        for line in proofs:
            seq = line.get("seq")
            if not isinstance(seq, int) or seq not in self.entries:
                self.found("bundle_consistency_invalid", f"no ledger entry seq {seq!r} bundled")
                continue
            entry = self.entries[seq]
            size, old, new = checkpoint.size, line.get("old_size"), line.get("new_size")
            tree_size = entry.get("tree_size")
            if not isinstance(old, int) or old != tree_size or new != size:
                detail = f"from {old} to {new}, not from the entry's {tree_size} to {size}"
                self.found("bundle_consistency_invalid", detail, seq)
                continue
            try:
                verify_consistency(
                    old,
                    size,
                    bytes(entry.get("tree_root") or b""),
                    checkpoint.root_hash,
                    [bytes.fromhex(step) for step in line.get("proof") or []],
                )
            except (ProofError, ValueError, TypeError) as exc:
                detail = f"from size {old} to {size}: {exc}"
                self.found("bundle_consistency_invalid", detail, seq)
                continue
            if (entry.get("head_version") or 1) != 1:  # a v1 head does not commit to its tree
                proven.add(seq)
        return proven

    def named_entry(self, checkpoint: Checkpoint) -> set[int]:
        """The entry at the checkpoint's size is the one its extension lines name (its seq, as
        a set, when it is bundled and is)."""
        facts = entry_facts(checkpoint)
        if facts is None:
            return set()
        named = self.entries.get(facts.seq)
        at_size = [e for e in self.entries.values() if e.get("tree_size") == checkpoint.size]
        wrong = [e for e in at_size if e["seq"] != facts.seq]
        if named is not None and (
            named.get("tree_size") != checkpoint.size or bytes(named["head"]) != facts.head
        ):
            wrong.append(named)
        for entry in wrong:
            seq, size = entry["seq"], entry.get("tree_size")
            self.found(
                "bundle_checkpoint_entry_mismatch",
                f"entry seq {seq} of tree size {size}: the checkpoint of size "
                f"{checkpoint.size} names seq {facts.seq} and its head",
                seq,
            )
        return {facts.seq} if named is not None and not wrong else set()
