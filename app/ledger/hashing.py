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
from operator import itemgetter
from typing import Any

import orjson

from app.core.config import SigningKey
from app.core.timefmt import format_timestamp
from app.events.record import EventRecord

# Every stored column of `audit_log` except the integrity columns themselves: the fields of the
# record queued and stored (app.events.record.EventRecord), in sorted order.
CANONICAL_FIELDS: tuple[str, ...] = tuple(sorted(EventRecord.__required_keys__))

CANONICAL_FIELD_SET = frozenset(CANONICAL_FIELDS)

KEY_ID_FIELD = "api_key_id"

# The form of events without a key id: every field but that one.
UNKEYED_FIELDS = tuple(f for f in CANONICAL_FIELDS if f != KEY_ID_FIELD)

UNKEYED_FIELD_SET = frozenset(UNKEYED_FIELDS)


class UnknownSigningKeyError(LookupError):
    """A signature names a key id that the configured key ring does not hold."""


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
    bytes as `hmac.digest`, which sets the key up anew on every call."""
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


# A row's fields of the record without a key id, in canonical order, read in one call.
_UNKEYED_VALUES = itemgetter(*UNKEYED_FIELDS)

_ROW_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z


def stored_row_hash(row: Mapping[str, Any]) -> bytes:
    """event_hash(record_from_row(row)), the same 32 bytes, for a row of audit_log as asyncpg
    returns it (text columns as str, UUIDs, aware datetimes, `details` as JSON text), in about
    half the time: the record is built in one go, and the times are left to orjson, which writes
    an aware datetime in UTC with a non-zero fraction exactly as format_timestamp does
    (OPT_UTC_Z; it would leave a zero fraction out, so those are formatted here). A row whose
    `details` is no JSON text (a value made in Python) takes record_from_row's way."""
    (
        action,
        break_glass,
        correlation_id,
        data_classification,
        details,
        event_id,
        ip_address,
        organization_id,
        outcome_description,
        patient_id,
        principal_id,
        principal_type,
        priority,
        purpose_of_use,
        received_at,
        session_id,
        status,
        target_resource_id,
        target_resource_type,
        timestamp,
        user_agent,
    ) = _UNKEYED_VALUES(row)
    if details is not None:
        if not isinstance(details, str | bytes):
            return event_hash(record_from_row(row))
        details = orjson.loads(details)
    if not (type(timestamp) is datetime and timestamp.tzinfo is UTC and timestamp.microsecond):
        timestamp = format_timestamp(timestamp)
    if not (
        type(received_at) is datetime and received_at.tzinfo is UTC and received_at.microsecond
    ):
        received_at = format_timestamp(received_at)
    record = {
        "action": action,
        "break_glass": break_glass,
        "correlation_id": correlation_id,
        "data_classification": data_classification,
        "details": details,
        "event_id": str(event_id),
        "ip_address": ip_address,
        "organization_id": organization_id,
        "outcome_description": outcome_description,
        "patient_id": patient_id,
        "principal_id": principal_id,
        "principal_type": principal_type,
        "priority": priority,
        "purpose_of_use": purpose_of_use,
        "received_at": received_at,
        "session_id": session_id,
        "status": status,
        "target_resource_id": target_resource_id,
        "target_resource_type": target_resource_type,
        "timestamp": timestamp,
        "user_agent": user_agent,
    }
    key_id = row.get(KEY_ID_FIELD)
    if key_id is not None:
        record[KEY_ID_FIELD] = str(key_id)
    return hashlib.sha256(orjson.dumps(record, option=_ROW_OPTIONS)).digest()


def content_digest(row: Mapping[str, Any]) -> bytes:
    """What a client sent, without the time it arrived and the key it came with: an exact resend
    of an event has the same content digest though its received_at (and so its hash) differs."""
    record = record_from_row(row)
    record["received_at"] = None
    record.pop(KEY_ID_FIELD, None)
    return hashlib.sha256(canonical_bytes(record)).digest()
