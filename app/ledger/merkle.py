"""Merkle trees over a batch's event hashes: roots, audit paths, and roots from paths."""

from __future__ import annotations

import hashlib

LEAF_PREFIX = b"\x00"

NODE_PREFIX = b"\x01"


def leaf_hash(event_digest: bytes) -> bytes:
    """H(0x00 || the 32 raw bytes of the event hash)."""
    return hashlib.sha256(LEAF_PREFIX + event_digest).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def leaf_hashes(event_digests: list[bytes]) -> list[bytes]:
    """leaf_hash of each event hash, in order."""
    sha = hashlib.sha256
    return [sha(LEAF_PREFIX + d).digest() for d in event_digests]


def merkle_root(event_digests: list[bytes]) -> bytes:
    """MTH over the leaves in order. Pairing level by level and carrying an odd last node up
    unchanged builds the same tree as RFC 6962's split at the largest power of two."""
    if not event_digests:
        raise ValueError("a Merkle tree needs at least one leaf")
    return root_of_leaves(leaf_hashes(event_digests))


def root_of_leaves(leaf_hashes: list[bytes]) -> bytes:
    """merkle_root from the leaf hashes themselves (a writer has them for its log too)."""
    if not leaf_hashes:
        raise ValueError("a Merkle tree needs at least one leaf")
    sha = hashlib.sha256
    level = leaf_hashes
    while len(level) > 1:
        paired = [
            sha(NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(_subtree_root(leaves[:k]), _subtree_root(leaves[k:]))


def audit_path(event_digests: list[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1: sibling hashes from the leaf up to the root."""
    if not 0 <= index < len(event_digests):
        raise IndexError("leaf index out of range")
    leaves = [leaf_hash(d) for d in event_digests]
    path: list[bytes] = []
    while len(leaves) > 1:
        k = _split(len(leaves))
        if index < k:
            path.append(_subtree_root(leaves[k:]))
            leaves = leaves[:k]
        else:
            path.append(_subtree_root(leaves[:k]))
            leaves, index = leaves[k:], index - k
    return path[::-1]
