"""Pure functions for tamper evidence: canonical form, event hash, HMAC signature.

The canonical form of an event is the compact JSON encoding, keys sorted at every level, of
exactly the stored fields named in `CANONICAL_FIELDS`: UUIDs lower-case and hyphenated,
timestamps in UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, absent optional values as `null`. Another
implementation that follows this paragraph reproduces every hash bit for bit.
"""

from __future__ import annotations

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


class UnknownSigningKeyError(LookupError):
    """A signature names a key id that the configured key ring does not hold."""


def format_timestamp(moment: datetime) -> str:
    """UTC, microsecond precision, `Z` suffix: the one timestamp format that is hashed."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must carry a UTC offset")
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond:06d}Z"


def parse_timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """The canonical encoding of an event record (see the module docstring)."""
    if record.keys() != CANONICAL_FIELD_SET:
        missing = sorted(CANONICAL_FIELD_SET - record.keys())
        extra = sorted(record.keys() - CANONICAL_FIELD_SET)
        raise ValueError(f"record fields differ: missing={missing} extra={extra}")
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def event_hash(record: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical encoding: 32 raw bytes."""
    return hashlib.sha256(canonical_bytes(record)).digest()


def sign_hash(digest: bytes, key: SigningKey) -> bytes:
    """HMAC-SHA256 over the raw event hash with the named key."""
    return hmac.new(key.secret, digest, hashlib.sha256).digest()


def verify_signature(
    digest: bytes, signature: bytes, key_id: str, keys: Mapping[str, SigningKey]
) -> bool:
    key = keys.get(key_id)
    if key is None:
        raise UnknownSigningKeyError(key_id)
    return hmac.compare_digest(sign_hash(digest, key), signature)
