"""A bundle's anchoring as pure logic (app.ledger.bundle_anchor): made-up entries over a test
log, its checkpoint signed with the log's key and cosigned by a witness key made here."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.ledger.bundle_anchor import PINNED_SOURCE, AnchorLines, check_anchoring
from app.ledger.checkpoints import origin_of
from app.ledger.notes import (
    COSIGNATURE_V1,
    Checkpoint,
    VerifierKey,
    cosign,
    format_note,
    public_key_of,
    sign_note_text,
)
from tests.witness.conftest import Log

LOG_ORIGIN = "audit.test/log"
ORIGIN = origin_of(LOG_ORIGIN, 0)
WITNESS = Ed25519PrivateKey.generate()
WITNESS_KEY = VerifierKey("witness.test/w1", COSIGNATURE_V1, public_key_of(WITNESS))


@pytest.fixture
def log() -> Log:
    return Log.make(ORIGIN, 16)


def entry(log: Log, seq: int, size: int, version: int = 2) -> dict[str, Any]:
    return {
        "chain": 0,
        "seq": seq,
        "head": bytes([seq]) * 32,
        "head_version": version,
        "tree_size": size,
        "tree_root": log.root(size),
    }


def cosigned(log: Log, size: int, extensions: tuple[str, ...] = ()) -> str:
    text = Checkpoint(ORIGIN, size, log.root(size), extensions).text
    signed = sign_note_text(text, ORIGIN, log.key)
    return format_note(text, [signed, cosign(text, WITNESS_KEY.name, WITNESS, 1_700_000_000)])


def lines(log: Log, size: int, proofs: dict[int, int], note: str | None = None) -> AnchorLines:
    """A bundle's anchoring lines: the checkpoint at `size`, a proof from each seq's size."""
    read = AnchorLines()
    read.read("witnesses", {"quorum": 1, "vkeys": [WITNESS_KEY.vkey]})
    read.read("log_keys", {"chain": 0, "vkeys": [log.vkey.vkey]})
    read.read("checkpoint", {"chain": 0, "note": note or cosigned(log, size)})
    for seq, old in proofs.items():
        proof = [h.hex() for h in log.proof(old, size)]
        line = {"chain": 0, "seq": seq, "old_size": old, "new_size": size, "proof": proof}
        read.read("consistency", line)
    return read


def test_a_proven_entry_anchors_those_before_it_and_none_after(log: Log) -> None:
    """seq 1 is a v1 entry (its head commits to no tree), seq 2 is proven, seq 3 is past the
    checkpoint: 1 and 2 are anchored, 3 is not."""
    entries = [entry(log, 1, 3, version=1), entry(log, 2, 7), entry(log, 3, 12)]
    result = check_anchoring(lines(log, 9, {1: 3, 2: 7}), LOG_ORIGIN, entries, "")
    assert result.findings == []
    assert [a["size"] for a in result.anchors] == [9]
    assert result.unanchored == [0]
    assert result.unanchored_entries == [{"chain": 0, "from_seq": 3, "to_seq": 3}]
    # Proven only through the v1 entry: nothing is anchored.
    alone = check_anchoring(lines(log, 9, {1: 3}), LOG_ORIGIN, entries[:2], "")
    assert alone.findings == [] and alone.unanchored_entries == [
        {"chain": 0, "from_seq": 1, "to_seq": 2}
    ]


def test_the_entry_at_the_checkpoints_size_must_be_the_one_it_names(log: Log) -> None:
    entries = [entry(log, 1, 3), entry(log, 2, 7)]
    head = base64.b64encode(entries[1]["head"]).decode()
    named = ("seq 2", f"head {head}", "sealed 2026-01-01T00:00:00.000000Z")
    note = cosigned(log, 7, named)
    assert check_anchoring(lines(log, 7, {}, note), LOG_ORIGIN, entries, "").findings == []
    entries[1]["head"] = bytes(32)
    found = check_anchoring(lines(log, 7, {}, note), LOG_ORIGIN, entries, "").findings
    assert [(f.check, f.seq) for f in found] == [("bundle_checkpoint_entry_mismatch", 2)]


def test_lines_that_prove_nothing_are_named(log: Log) -> None:
    entries = [entry(log, 1, 3)]
    read = lines(log, 9, {1: 3, 5: 7})  # seq 5 is not bundled
    read.read("checkpoint", {"chain": 0, "note": cosigned(log, 9)})  # a second one
    read.read("checkpoint", {"chain": 1, "note": cosigned(log, 9)})  # chain 0's, as chain 1's
    read.read("log_keys", {"chain": 1, "vkeys": [log.vkey.vkey]})
    found = check_anchoring(read, LOG_ORIGIN, entries, "").findings
    assert sorted((f.check, f.chain) for f in found) == [
        ("bundle_checkpoint_invalid", 0),
        ("bundle_checkpoint_invalid", 1),
        ("bundle_log_key_mismatch", 1),
    ]
    # A proof line for an entry the bundle does not hold.
    found = check_anchoring(lines(log, 9, {1: 3, 5: 7}), LOG_ORIGIN, entries, "").findings
    assert [(f.check, f.seq) for f in found] == [("bundle_consistency_invalid", None)]


def test_the_log_key_must_be_the_public_key_given(log: Log) -> None:
    entries = [entry(log, 1, 3)]
    mine = base64.b64encode(log.vkey.public_key).decode()
    assert check_anchoring(lines(log, 9, {1: 3}), LOG_ORIGIN, entries, mine).findings == []
    other = base64.b64encode(public_key_of(Ed25519PrivateKey.generate())).decode()
    found = check_anchoring(lines(log, 9, {1: 3}), LOG_ORIGIN, entries, other).findings
    assert {f.check for f in found} == {"bundle_log_key_mismatch", "bundle_checkpoint_invalid"}


def test_pinned_witness_keys_and_quorum_override_the_bundles(log: Log) -> None:
    entries = [entry(log, 1, 3)]
    other = VerifierKey("witness.test/w2", COSIGNATURE_V1, public_key_of(WITNESS))
    for pinned, quorum, anchored in [
        ((WITNESS_KEY,), None, True),
        ((other,), None, False),  # another name: not the key that cosigned
        ((WITNESS_KEY, other), 2, False),
    ]:
        result = check_anchoring(lines(log, 9, {1: 3}), LOG_ORIGIN, entries, "", pinned, quorum)
        assert result.trust.source == PINNED_SOURCE
        assert bool(result.anchors) is anchored
        checks = [f.check for f in result.findings]
        assert checks == ([] if anchored else ["bundle_checkpoint_unwitnessed"])
