"""Ledger heads: each entry's head commits to the one before it, so a chain
cannot be cut, reordered or rewritten unseen."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from app.core.config import SigningKey
from app.core.timefmt import epoch_micros
from app.ledger.hashing import sign_hash

GENESIS_HEAD = bytes(32)

HEAD_DOMAIN = b"audit-ledger-head-v1"

HEAD_V2_DOMAIN = b"audit-ledger-head-v2"

HEAD_V3_DOMAIN = b"audit-ledger-head-v3"

GENESIS_DOMAIN = b"audit-ledger-genesis-v1"


def genesis_head(chain: int) -> bytes:
    """The prev_head of a chain's first entry: 32 zero bytes for chain 0 (the only chain before
    stream shards), SHA-256(domain tag || chain as 4 bytes big-endian) for the others, so an
    entry cannot be moved to the start of another chain unnoticed."""
    if chain == 0:
        return GENESIS_HEAD
    return hashlib.sha256(GENESIS_DOMAIN + chain.to_bytes(4, "big")).digest()


def ledger_head(
    prev_head: bytes, seq: int, root: bytes, count: int, first: datetime, last: datetime
) -> bytes:
    """SHA-256 of: the domain tag, prev_head (32 bytes), seq and count (8-byte big-endian
    unsigned), the root (32 bytes), first and last event time (8-byte big-endian signed
    microseconds since the Unix epoch)."""
    return hashlib.sha256(
        HEAD_DOMAIN + _batch_fields(prev_head, seq, root, count, first, last)
    ).digest()


def _batch_fields(
    prev_head: bytes, seq: int, root: bytes, count: int, first: datetime, last: datetime
) -> bytes:
    """The batch's part of a head, v1 and v2 alike, in the layout ledger_head describes."""
    return (
        prev_head
        + seq.to_bytes(8, "big")
        + root
        + count.to_bytes(8, "big")
        + epoch_micros(first).to_bytes(8, "big", signed=True)
        + epoch_micros(last).to_bytes(8, "big", signed=True)
    )


def ledger_head_v2(
    prev_head: bytes,
    seq: int,
    root: bytes,
    count: int,
    first: datetime,
    last: datetime,
    tree_size: int,
    tree_root: bytes,
) -> bytes:
    """The head of an entry sealed into the chain's log: SHA-256 of the v2 domain tag and the
    fields of the v1 head in the same layout, then the log's tree size after the batch (8-byte
    big-endian unsigned) and its RFC 9162 root (32 bytes)."""
    return hashlib.sha256(
        HEAD_V2_DOMAIN + _v2_fields(prev_head, seq, root, count, first, last, tree_size, tree_root)
    ).digest()


def _v2_fields(
    prev_head: bytes,
    seq: int,
    root: bytes,
    count: int,
    first: datetime,
    last: datetime,
    tree_size: int,
    tree_root: bytes,
) -> bytes:
    """The fields of a v2 head, v2 and v3 alike, in the layout ledger_head_v2 describes."""
    return (
        _batch_fields(prev_head, seq, root, count, first, last)
        + tree_size.to_bytes(8, "big")
        + tree_root
    )


def ledger_head_v3(
    prev_head: bytes,
    seq: int,
    root: bytes,
    count: int,
    first: datetime,
    last: datetime,
    tree_size: int,
    tree_root: bytes,
    sealed_at: datetime,
) -> bytes:
    """The head of an entry whose sealing time is committed too: SHA-256 of the v3 domain tag,
    the fields of the v2 head in the same layout, then sealed_at (8-byte big-endian signed
    microseconds since the Unix epoch), which never decreases along a chain."""
    return hashlib.sha256(
        HEAD_V3_DOMAIN
        + _v2_fields(prev_head, seq, root, count, first, last, tree_size, tree_root)
        + epoch_micros(sealed_at).to_bytes(8, "big", signed=True)
    ).digest()


def entry_head(entry: Mapping[str, Any]) -> bytes:
    """The head an entry's own fields give, by its head version (1: before the log; 2: also
    committing to tree_size and tree_root; 3: and to sealed_at). Raises ValueError for another
    version."""
    version = entry.get("head_version") or 1
    fields = (
        bytes(entry["prev_head"]),
        entry["seq"],
        bytes(entry["merkle_root"]),
        entry["event_count"],
        entry["first_timestamp"],
        entry["last_timestamp"],
    )
    if version == 1:
        return ledger_head(*fields)
    if version == 2:
        return ledger_head_v2(*fields, entry["tree_size"], bytes(entry["tree_root"]))
    if version == 3:
        tree = (entry["tree_size"], bytes(entry["tree_root"]))
        return ledger_head_v3(*fields, *tree, entry["sealed_at"])
    raise ValueError(f"head version {version} is not known")


def sign_head(head: bytes, key: SigningKey) -> bytes:
    """HMAC-SHA256 over the raw head with the named key (same construction as for events)."""
    return sign_hash(head, key)
