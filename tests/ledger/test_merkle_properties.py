"""Property-based tests of Merkle roots and inclusion proofs against RFC 6962, written out
independently of app.ledger.merkle."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ledger.merkle import audit_path, leaf_hash, merkle_root
from app.ledger.tlog import root_from_inclusion_proof
from tests.strategies import FEW, MODERATE

# -- 2. Merkle trees and inclusion proofs -------------------------------------------------------


def rfc6962_root(digests: list[bytes]) -> bytes:
    """MTH of RFC 6962 section 2.1, written out independently of app.ledger.hashing."""
    if len(digests) == 1:
        return hashlib.sha256(b"\x00" + digests[0]).digest()
    split = 1 << ((len(digests) - 1).bit_length() - 1)
    left, right = rfc6962_root(digests[:split]), rfc6962_root(digests[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def digest_lists(max_size: int, distinct: bool) -> st.SearchStrategy[list[bytes]]:
    """Event hashes; without `distinct`, drawn from a small pool so that leaves repeat."""
    keys = st.integers(0, 2**16 - 1) if distinct else st.integers(0, 7)
    return st.integers(1, max_size).flatmap(
        lambda n: st.lists(keys, min_size=n, max_size=n, unique=distinct).map(
            lambda ks: [hashlib.sha256(k.to_bytes(2, "big")).digest() for k in ks]
        )
    )


def flip(value: bytes, bit: int) -> bytes:
    bit %= 8 * len(value)
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def proves(digest: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    try:
        return root_from_inclusion_proof(index, size, leaf_hash(digest), path) == root
    except ValueError:
        return False


def check_proof_of(digests: list[bytes], index: int, root: bytes, shift: int, bit: int) -> None:
    size, digest = len(digests), digests[index]
    path = audit_path(digests, index)
    assert root_from_inclusion_proof(index, size, leaf_hash(digest), path) == root
    assert not proves(flip(digest, bit), index, size, path, root)
    if size > 1:
        assert not proves(digest, (index + shift) % size, size, path, root)
    for k in range(len(path)):
        assert not proves(
            digest, index, size, [*path[:k], flip(path[k], bit), *path[k + 1 :]], root
        )
    if path:
        with pytest.raises(ValueError, match="shorter"):
            root_from_inclusion_proof(index, size, leaf_hash(digest), path[:-1])
    with pytest.raises(ValueError, match="longer"):
        root_from_inclusion_proof(index, size, leaf_hash(digest), [*path, root])


@FEW
@given(digest_lists(300, distinct=True), st.integers(1, 299), st.integers(0, 255))
def test_every_audit_path_proves_its_leaf_and_no_tampered_variant(
    digests: list[bytes], shift: int, bit: int
) -> None:
    root = merkle_root(digests)
    assert root == rfc6962_root(digests)
    shift = 1 + (shift - 1) % max(1, len(digests) - 1)
    for index in range(len(digests)):
        check_proof_of(digests, index, root, shift, bit)


@MODERATE
@given(digest_lists(64, distinct=False))
def test_audit_paths_recompute_the_root_when_leaves_repeat(digests: list[bytes]) -> None:
    root = merkle_root(digests)
    assert root == rfc6962_root(digests)
    for index, digest in enumerate(digests):
        path = audit_path(digests, index)
        assert root_from_inclusion_proof(index, len(digests), leaf_hash(digest), path) == root
    with pytest.raises(IndexError):
        audit_path(digests, len(digests))
    with pytest.raises(ValueError):
        root_from_inclusion_proof(len(digests), len(digests), leaf_hash(digests[0]), [])


@MODERATE
@given(digest_lists(300, distinct=False), st.binary(min_size=32, max_size=32))
def test_one_more_leaf_changes_the_root(digests: list[bytes], extra: bytes) -> None:
    assert merkle_root([*digests, extra]) != merkle_root(digests)
    assert merkle_root([*digests, extra]) == rfc6962_root([*digests, extra])
