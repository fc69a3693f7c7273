"""Which checkpoint anchors a chain: the newest a quorum cosigned, copies joined; two signed
checkpoints of one size and different roots are a fork, whatever cosigned them."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.ledger.anchor import AnchorPolicy, choose_anchors
from app.ledger.checkpoints import LogSigner, origin_of
from app.ledger.notes import COSIGNATURE_V1, Checkpoint, VerifierKey, cosign, public_key_of
from app.ledger.signing import new_keypair

ORIGIN = "audit.test/log"


def witness(name: str) -> tuple[Ed25519PrivateKey, VerifierKey]:
    key = Ed25519PrivateKey.generate()
    return key, VerifierKey(name, COSIGNATURE_V1, public_key_of(key))


def test_the_newest_quorum_wins_copies_join_and_a_fork_is_named() -> None:
    private, public = new_keypair()
    signer = LogSigner(ORIGIN, private)
    (k1, v1), (k2, v2) = witness("w1"), witness("w2")
    policy = AnchorPolicy(ORIGIN, public, (v1, v2), 2)

    def note(size: int, root: bytes, *by: tuple[Ed25519PrivateKey, VerifierKey]) -> str:
        text = signer.sign(Checkpoint(origin_of(ORIGIN, 0), size, root))
        body = text.split("\n\n")[0] + "\n"
        return text + "".join(cosign(body, v.name, k, 1_700_000_000).line for k, v in by)

    root = hashlib.sha256(b"a").digest()
    other = hashlib.sha256(b"b").digest()
    found = choose_anchors(
        policy,
        [
            ("w1 state", note(9, root, (k1, v1))),
            ("w2 state", note(9, root, (k2, v2))),  # joined with w1's copy: a quorum of two
            ("file", note(12, other, (k1, v1))),  # newer, but one cosignature only
        ],
    )
    assert found.by_chain[0].checkpoint.size == 9
    assert found.by_chain[0].witnesses == ("w1", "w2")
    assert not found.forks and any("cosigned by 1 of the 2" in r for r in found.refused)
    forked = choose_anchors(policy, [("a", note(9, root, (k1, v1))), ("b", note(9, other))])
    assert [f.check for f in forked.forks] == ["checkpoint_fork"]
