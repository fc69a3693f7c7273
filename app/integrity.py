"""Pure functions for tamper evidence: canonical form, event hash, HMAC signature.

The canonical form of an event is the compact JSON encoding, keys sorted at every level, of
exactly the stored fields named in `CANONICAL_FIELDS`: UUIDs lower-case and hyphenated,
timestamps in UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, absent optional values as `null`, except
`api_key_id` (the key that sent the event), which is left out when there is none (events stored
before it was recorded). Another implementation that follows this paragraph reproduces every
hash bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from app.config import SigningKey

# Every stored column of `audit_log` except the integrity columns themselves.
CANONICAL_FIELDS: tuple[str, ...] = (
    "action",
    "api_key_id",
    "break_glass",
    "correlation_id",
    "data_classification",
    "details",
    "event_id",
    "ip_address",
    "organization_id",
    "outcome_description",
    "patient_id",
    "principal_id",
    "principal_type",
    "priority",
    "purpose_of_use",
    "received_at",
    "session_id",
    "status",
    "target_resource_id",
    "target_resource_type",
    "timestamp",
    "user_agent",
)
CANONICAL_FIELD_SET = frozenset(CANONICAL_FIELDS)
KEY_ID_FIELD = "api_key_id"
# The form of events without a key id: every field but that one.
UNKEYED_FIELDS = tuple(f for f in CANONICAL_FIELDS if f != KEY_ID_FIELD)
UNKEYED_FIELD_SET = frozenset(UNKEYED_FIELDS)


class UnknownSigningKeyError(LookupError):
    """A signature names a key id that the configured key ring does not hold."""


def format_timestamp(moment: datetime) -> str:
    """UTC, microsecond precision, `Z` suffix: the one timestamp format that is hashed."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must carry a UTC offset")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat pads the year to four digits and is far quicker than strftime; cut "+00:00".
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """The canonical encoding of an event record (see the module docstring); a record whose
    `api_key_id` is None, or that has none, is encoded without it."""
    keys = record.keys()
    if keys == CANONICAL_FIELD_SET:
        if record[KEY_ID_FIELD] is None:
            record = {k: v for k, v in record.items() if k != KEY_ID_FIELD}
    elif keys != UNKEYED_FIELD_SET:
        missing = sorted(UNKEYED_FIELD_SET - keys)
        extra = sorted(keys - CANONICAL_FIELD_SET)
        raise ValueError(f"record fields differ: missing={missing} extra={extra}")
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def event_hash(record: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical encoding: 32 raw bytes."""
    return hashlib.sha256(canonical_bytes(record)).digest()


def sign_hash(digest: bytes, key: SigningKey) -> bytes:
    """HMAC-SHA256 (RFC 2104) over the raw event hash with the named key. The key's padded
    inner and outer states are computed once per key and copied for each message: the same
    bytes as `hmac.digest`, in about half its time (it sets the key up anew on every call)."""
    inner_start, outer_start = _hmac_states(key.secret)
    inner = inner_start.copy()
    inner.update(digest)
    outer = outer_start.copy()
    outer.update(inner.digest())
    signature: bytes = outer.digest()
    return signature


SHA256_BLOCK = 64


@functools.lru_cache(maxsize=64)
def _hmac_states(secret: bytes) -> tuple[Any, Any]:
    """SHA-256 states after absorbing the key XOR ipad and the key XOR opad."""
    if len(secret) > SHA256_BLOCK:
        secret = hashlib.sha256(secret).digest()
    block = secret.ljust(SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


def verify_signature(
    digest: bytes, signature: bytes, key_id: str, keys: Mapping[str, SigningKey]
) -> bool:
    key = keys.get(key_id)
    if key is None:
        raise UnknownSigningKeyError(key_id)
    return hmac.compare_digest(sign_hash(digest, key), signature)


# -- Merkle trees (RFC 6962 / RFC 9162 section 2.1) ---------------------------------------------

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def leaf_hash(event_digest: bytes) -> bytes:
    """H(0x00 || the 32 raw bytes of the event hash)."""
    return hashlib.sha256(LEAF_PREFIX + event_digest).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def merkle_root(event_digests: list[bytes]) -> bytes:
    """MTH over the leaves in order. Pairing level by level and carrying an odd last node up
    unchanged builds the same tree as RFC 6962's split at the largest power of two."""
    if not event_digests:
        raise ValueError("a Merkle tree needs at least one leaf")
    sha = hashlib.sha256
    level = [sha(LEAF_PREFIX + d).digest() for d in event_digests]
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


def root_from_path(event_digest: bytes, index: int, tree_size: int, path: list[bytes]) -> bytes:
    """The root an inclusion proof commits to (RFC 9162 2.1.3.2); compare it to the signed one."""
    if not 0 <= index < tree_size:
        raise ValueError("leaf index out of range")
    fn, sn = index, tree_size - 1
    r = leaf_hash(event_digest)
    for p in path:
        if sn == 0:
            raise ValueError("proof is longer than the tree")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("proof is shorter than the tree")
    return r


# -- the ledger chain ---------------------------------------------------------------------------

GENESIS_HEAD = bytes(32)
HEAD_DOMAIN = b"audit-ledger-head-v1"
GENESIS_DOMAIN = b"audit-ledger-genesis-v1"


def genesis_head(chain: int) -> bytes:
    """The prev_head of a chain's first entry: 32 zero bytes for chain 0 (the only chain before
    stream shards), SHA-256(domain tag || chain as 4 bytes big-endian) for the others, so an
    entry cannot be moved to the start of another chain unnoticed."""
    if chain == 0:
        return GENESIS_HEAD
    return hashlib.sha256(GENESIS_DOMAIN + chain.to_bytes(4, "big")).digest()


def epoch_micros(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def ledger_head(
    prev_head: bytes, seq: int, root: bytes, count: int, first: datetime, last: datetime
) -> bytes:
    """SHA-256 of: the domain tag, prev_head (32 bytes), seq and count (8-byte big-endian
    unsigned), the root (32 bytes), first and last event time (8-byte big-endian signed
    microseconds since the Unix epoch)."""
    return hashlib.sha256(
        HEAD_DOMAIN
        + prev_head
        + seq.to_bytes(8, "big")
        + root
        + count.to_bytes(8, "big")
        + epoch_micros(first).to_bytes(8, "big", signed=True)
        + epoch_micros(last).to_bytes(8, "big", signed=True)
    ).digest()


def sign_head(head: bytes, key: SigningKey) -> bytes:
    """HMAC-SHA256 over the raw head with the named key (same construction as for events)."""
    return sign_hash(head, key)


def record_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical record of a stored audit_log row (as asyncpg returns it): what its hash
    covers, so a row read back can be checked against its hash."""
    record = dict(zip(UNKEYED_FIELDS, map(row.__getitem__, UNKEYED_FIELDS), strict=True))
    key_id = row.get(KEY_ID_FIELD)
    if key_id is not None:
        record[KEY_ID_FIELD] = str(key_id)
    record["event_id"] = str(record["event_id"])
    record["timestamp"] = format_timestamp(record["timestamp"])
    record["received_at"] = format_timestamp(record["received_at"])
    details = record["details"]
    if isinstance(details, str | bytes):
        record["details"] = orjson.loads(details)
    return record


def content_digest(row: Mapping[str, Any]) -> bytes:
    """What a client sent, without the time it arrived and the key it came with: an exact resend
    of an event has the same content digest though its received_at (and so its hash) differs."""
    record = record_from_row(row)
    record["received_at"] = None
    record.pop(KEY_ID_FIELD, None)
    return hashlib.sha256(canonical_bytes(record)).digest()
