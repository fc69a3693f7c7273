"""Property-based tests of the canonical form, the event hash and its HMAC: independent of key
order, lossless, as another encoder writes it, changed by any field, one record per instant."""

from __future__ import annotations

import hmac
import json
import random
import uuid
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from app.core.config import SigningKey
from app.core.timefmt import format_timestamp, parse_timestamp
from app.ledger.hashing import (
    CANONICAL_FIELDS,
    canonical_bytes,
    content_digest,
    event_hash,
    record_from_row,
    sign_hash,
    stored_row_hash,
)
from tests.strategies import (
    CARRIED_JSON,
    DETAILS_NO_FLOAT,
    KEY_ID,
    MODERATE,
    OFFSETS,
    RECEIVED_AT,
    RECORDS,
    UTC_TIMES,
    canonical_records,
    event_body,
    parse_event,
    reordered,
    sorted_object,
)

# -- 1. canonical form and event hash -----------------------------------------------------------


@MODERATE
@given(RECORDS, st.randoms(use_true_random=False))
def test_canonical_form_does_not_depend_on_key_order(
    record: dict[str, Any], rng: random.Random
) -> None:
    shuffled = reordered(record, rng)
    assert canonical_bytes(shuffled) == canonical_bytes(record)
    assert event_hash(shuffled) == event_hash(record)


@MODERATE
@given(RECORDS)
def test_canonical_form_is_lossless_with_keys_in_code_point_order(record: dict[str, Any]) -> None:
    decoded = json.loads(canonical_bytes(record), object_pairs_hook=sorted_object)
    assert decoded == _without_null_key_id(record)


@MODERATE
@given(canonical_records(DETAILS_NO_FLOAT))
def test_canonical_form_is_sorted_compact_json_as_another_encoder_writes_it(
    record: dict[str, Any],
) -> None:
    # Float spelling (1e-07 or 1e-7) is encoder-specific; every other token must agree.
    expected = json.dumps(
        _without_null_key_id(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert canonical_bytes(record) == expected.encode()


def _without_null_key_id(record: dict[str, Any]) -> dict[str, Any]:
    """The canonical form leaves out an absent key id (events stored before keys were kept)."""
    if record["api_key_id"] is None:
        return {k: v for k, v in record.items() if k != "api_key_id"}
    return record


@MODERATE
@given(RECORDS, st.data())
def test_changing_any_one_field_changes_the_hash(
    record: dict[str, Any], data: st.DataObject
) -> None:
    original = event_hash(record)
    for field in CANONICAL_FIELDS:
        changed = data.draw(CARRIED_JSON, label=field)
        if changed != record[field]:
            assert event_hash({**record, field: changed}) != original, field


@MODERATE
@given(UTC_TIMES, OFFSETS, OFFSETS, st.uuids())
def test_one_instant_at_any_utc_offset_gives_one_record_and_hash(
    instant: datetime, first: tzinfo, second: tzinfo, event_id: uuid.UUID
) -> None:
    records = [
        parse_event(
            event_body(event_id=str(event_id), timestamp=instant.astimezone(zone).isoformat())
        ).to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)
        for zone in (first, second)
    ]
    assert records[0] == records[1]
    assert records[0]["timestamp"] == format_timestamp(instant)
    assert event_hash(records[0]) == event_hash(records[1])


@MODERATE
@given(RECORDS, st.timezones() | OFFSETS, st.timezones() | OFFSETS, st.booleans())
def test_a_row_read_back_in_any_zone_hashes_as_it_was_written(
    record: dict[str, Any], zone: tzinfo, other_zone: tzinfo, details_as_text: bool
) -> None:
    details = record["details"]
    row = {
        **record,
        "event_id": uuid.UUID(record["event_id"]),
        "timestamp": parse_timestamp(record["timestamp"]).astimezone(zone),
        "received_at": parse_timestamp(record["received_at"]).astimezone(other_zone),
        "details": orjson.dumps(details).decode() if details_as_text else details,
    }
    assert event_hash(record_from_row(row)) == event_hash(record)
    assert stored_row_hash(row) == event_hash(record)
    resent = {**row, "received_at": datetime(2030, 1, 1, tzinfo=UTC)}
    assert content_digest(resent) == content_digest(row)
    moved = {**row, "timestamp": row["timestamp"] + timedelta(microseconds=1)}
    assert content_digest(moved) != content_digest(row)


@MODERATE
@given(RECORDS, st.booleans(), st.sampled_from([1, 999, 1000, 1970, 2026, 9999]))
def test_a_row_as_asyncpg_reads_it_hashes_as_its_record(
    record: dict[str, Any], whole_second: bool, year: int
) -> None:
    """stored_row_hash, which leaves the times to orjson, against the record's own hash: times
    in UTC with and without a fraction, in any year, details as JSON text or none, with and
    without a key id."""
    timestamp = parse_timestamp(record["timestamp"])
    timestamp = timestamp.replace(year=year, day=min(timestamp.day, 28))
    if whole_second:
        timestamp = timestamp.replace(microsecond=0)
    record = {**record, "timestamp": format_timestamp(timestamp)}
    details = record["details"]
    row = {
        **record,
        "event_id": uuid.UUID(record["event_id"]),
        "api_key_id": None if record["api_key_id"] is None else uuid.UUID(record["api_key_id"]),
        "timestamp": timestamp,
        "received_at": parse_timestamp(record["received_at"]).astimezone(UTC),
        "details": None if details is None else orjson.dumps(details).decode(),
        "hash": b"\0" * 32,
        "leaf_index": 3,
    }
    assert stored_row_hash(row) == event_hash(record) == event_hash(record_from_row(row))


@given(secret=st.binary(min_size=1, max_size=200), message=st.binary(max_size=100))
def test_signatures_are_rfc_2104_hmac_sha256(secret: bytes, message: bytes) -> None:
    """The precomputed-state HMAC agrees with the standard library's for any key length
    (keys longer than a block are hashed first) and any message."""
    key = SigningKey("k", secret)
    assert sign_hash(message, key) == hmac.digest(secret, message, "sha256")
    assert sign_hash(message, key) == sign_hash(message, key)  # the cached states stay fresh
