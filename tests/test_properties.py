"""Property-based tests of the pure core: the canonical form and event hash, Merkle inclusion
proofs, keyset cursors, and event validation as the ingest routes run it. No servers needed."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, get_args

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from app.api.pagination import (
    CursorError,
    decode_cursor,
    decode_key_cursor,
    encode_cursor,
    encode_key_cursor,
)
from app.api.schemas import (
    EARLIEST,
    EVENT_LIST,
    LATEST,
    Classification,
    EventIn,
    Priority,
    Status,
    _plain_address,
)
from app.core.config import SigningKey
from app.core.timefmt import format_timestamp, parse_timestamp
from app.ledger.hashing import (
    CANONICAL_FIELDS,
    canonical_bytes,
    content_digest,
    event_hash,
    record_from_row,
    sign_hash,
)
from app.ledger.merkle import audit_path, merkle_root, root_from_path

MODERATE = settings(max_examples=60, deadline=None)
FEW = settings(max_examples=25, deadline=None)

# -- strategies ---------------------------------------------------------------------------------

# Characters that stress JSON encoders: NUL and controls, U+2028, the edges of the BMP and the
# astral planes, quote and backslash.
SPECIAL = '\x00\x1f\x7f\u2028\ud7ff\ue000\uffff\U0001f600\U0010ffff"\\é'
CHARS = st.characters(codec="utf-8") | st.sampled_from(SPECIAL)
NUL_FREE_CHARS = st.characters(codec="utf-8", exclude_characters="\x00") | st.sampled_from(
    SPECIAL.replace("\x00", "")
)
TEXT = st.text(CHARS, max_size=12)
OPTIONAL_TEXT = st.none() | TEXT
# orjson (and so the canonical form) carries integers from -2**63 to 2**64 - 1.
INT64 = st.integers(-(2**63), 2**64 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
SCALARS_NO_FLOAT = st.none() | st.booleans() | INT64 | TEXT


def json_trees(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
        max_leaves=16,
    )


DETAILS = st.dictionaries(TEXT, json_trees(SCALARS_NO_FLOAT | FINITE), max_size=5)
DETAILS_NO_FLOAT = st.dictionaries(TEXT, json_trees(SCALARS_NO_FLOAT), max_size=5)
# Values the canonical form can carry, of any JSON type.
CARRIED_JSON = json_trees(SCALARS_NO_FLOAT | FINITE)
# Anything JSON can spell, including integers past 64 bits and (as NaN/Infinity) non-finite.
ANY_JSON = json_trees(st.none() | st.booleans() | st.integers() | st.floats() | TEXT)

OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
UTC_TIMES = st.datetimes(datetime(1970, 1, 1), datetime(9999, 12, 29), timezones=st.just(UTC))
TIMESTAMP_TEXT = UTC_TIMES.map(format_timestamp)


def canonical_records(details: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Records as `EventIn.to_record` builds them: every canonical field, values of its type."""
    return st.fixed_dictionaries(
        {
            "action": TEXT,
            "api_key_id": st.none() | st.uuids().map(str),
            "break_glass": st.booleans(),
            "correlation_id": OPTIONAL_TEXT,
            "data_classification": st.sampled_from(get_args(Classification)),
            "details": st.none() | details,
            "event_id": st.uuids().map(str),
            "ip_address": st.none() | st.ip_addresses().map(str),
            "organization_id": TEXT,
            "outcome_description": OPTIONAL_TEXT,
            "patient_id": OPTIONAL_TEXT,
            "principal_id": TEXT,
            "principal_type": OPTIONAL_TEXT,
            "priority": st.sampled_from(get_args(Priority)),
            "purpose_of_use": OPTIONAL_TEXT,
            "received_at": TIMESTAMP_TEXT,
            "session_id": OPTIONAL_TEXT,
            "status": st.sampled_from(get_args(Status)),
            "target_resource_id": OPTIONAL_TEXT,
            "target_resource_type": OPTIONAL_TEXT,
            "timestamp": TIMESTAMP_TEXT,
            "user_agent": OPTIONAL_TEXT,
        }
    )


RECORDS = canonical_records(DETAILS)


def reordered(value: Any, rng: random.Random) -> Any:
    """The same JSON value with the keys of every object in a random insertion order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: reordered(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [reordered(item, rng) for item in value]
    return value


def sorted_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert keys == sorted(set(keys)), keys
    return dict(pairs)


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


def event_body(**fields: Any) -> bytes:
    base = {"action": "fhir.patient.read", "status": "success", "principal_id": "dr.smith"}
    return json.dumps({**base, **fields}).encode()


def parse_event(body: bytes, max_details_bytes: int = 64 * 1024) -> EventIn:
    """Validate one event as POST /events does."""
    context = {"max_details_bytes": max_details_bytes}
    return EventIn.model_validate_json(body, strict=True, context=context)


def parse_bulk(body: bytes) -> list[EventIn]:
    """Validate a JSON array of events as POST /events/bulk does."""
    return EVENT_LIST.validate_json(body, strict=True, context={"max_details_bytes": 64 * 1024})


def with_details_json(details: bytes) -> bytes:
    """An event body whose details is the given JSON text, spelled exactly as given."""
    return event_body()[:-1] + b', "details": ' + details + b"}"


RECEIVED_AT = "2026-01-02T03:04:05.678901Z"
KEY_ID = "0c0ffee0-0000-4000-8000-000000000001"  # the API key a record says sent it


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
    resent = {**row, "received_at": datetime(2030, 1, 1, tzinfo=UTC)}
    assert content_digest(resent) == content_digest(row)
    moved = {**row, "timestamp": row["timestamp"] + timedelta(microseconds=1)}
    assert content_digest(moved) != content_digest(row)


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
        return root_from_path(digest, index, size, path) == root
    except ValueError:
        return False


def check_proof_of(digests: list[bytes], index: int, root: bytes, shift: int, bit: int) -> None:
    size, digest = len(digests), digests[index]
    path = audit_path(digests, index)
    assert root_from_path(digest, index, size, path) == root
    assert not proves(flip(digest, bit), index, size, path, root)
    if size > 1:
        assert not proves(digest, (index + shift) % size, size, path, root)
    for k in range(len(path)):
        assert not proves(
            digest, index, size, [*path[:k], flip(path[k], bit), *path[k + 1 :]], root
        )
    if path:
        with pytest.raises(ValueError, match="shorter"):
            root_from_path(digest, index, size, path[:-1])
    with pytest.raises(ValueError, match="longer"):
        root_from_path(digest, index, size, [*path, root])


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
        assert root_from_path(digest, index, len(digests), audit_path(digests, index)) == root
    with pytest.raises(IndexError):
        audit_path(digests, len(digests))
    with pytest.raises(ValueError):
        root_from_path(digests[0], len(digests), len(digests), [])


@MODERATE
@given(digest_lists(300, distinct=False), st.binary(min_size=32, max_size=32))
def test_one_more_leaf_changes_the_root(digests: list[bytes], extra: bytes) -> None:
    assert merkle_root([*digests, extra]) != merkle_root(digests)
    assert merkle_root([*digests, extra]) == rfc6962_root([*digests, extra])


# -- 3. keyset cursors --------------------------------------------------------------------------

ORDERS = st.sampled_from(["asc", "desc"])
AWARE_TIMES = st.datetimes(
    datetime(1, 1, 2), datetime(9999, 12, 30), timezones=st.timezones() | OFFSETS
)
URLSAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ISO 8601 look-alikes: years 0000 to 9999, offsets up to +-99:99:99, 1 to 9 fraction digits.
TWO_DIGITS = "[0-9]{2}"
ISO_LIKE = st.from_regex(
    rf"\A[0-9]{{4}}-{TWO_DIGITS}-{TWO_DIGITS}"
    rf"([T ]{TWO_DIGITS}(:{TWO_DIGITS}(:{TWO_DIGITS}(\.[0-9]{{1,9}})?)?)?)?"
    rf"(Z|[+-]{TWO_DIGITS}(:?{TWO_DIGITS}(:{TWO_DIGITS})?)?)?\Z"
)
UUID_LIKE = st.uuids().map(str) | st.uuids().map(lambda u: u.hex.upper()) | TEXT
# Near-misses of an issued cursor: a time-like, a uuid-like and an order-like string.
TRIPLES = st.tuples(ISO_LIKE | AWARE_TIMES.map(datetime.isoformat), UUID_LIKE, ORDERS | TEXT).map(
    lambda parts: b64(orjson.dumps(list(parts)))
)
FOREIGN_CURSORS = (
    TRIPLES
    | st.text(CHARS | st.sampled_from("\ud800\udfff=+/"))
    | st.binary().map(b64)
    | st.lists(ISO_LIKE | ANY_JSON, max_size=4).map(lambda parts: b64(json.dumps(parts).encode()))
    | ANY_JSON.map(lambda value: b64(json.dumps(value).encode()))
)


@MODERATE
@given(AWARE_TIMES, st.uuids(), ORDERS)
def test_cursors_round_trip_for_their_own_order_only(
    moment: datetime, event_id: uuid.UUID, order: str
) -> None:
    cursor = encode_cursor(moment, event_id, order)
    assert set(cursor) <= URLSAFE
    decoded_moment, decoded_id = decode_cursor(cursor, order)
    assert decoded_id == event_id
    # Compare in UTC: aware datetimes in a repeated local hour never equal another zone's.
    assert decoded_moment == moment.astimezone(UTC)
    assert decoded_moment.utcoffset() == timedelta(0)
    with pytest.raises(CursorError):
        decode_cursor(cursor, "desc" if order == "asc" else "asc")
    with pytest.raises(CursorError):
        decode_key_cursor(cursor)


@MODERATE
@given(FOREIGN_CURSORS, ORDERS)
def test_any_cursor_text_gives_a_position_or_cursor_error(text: str, order: str) -> None:
    try:
        moment, event_id = decode_cursor(text, order)
    except CursorError:
        pass
    else:
        assert moment.utcoffset() == timedelta(0)
        assert isinstance(event_id, uuid.UUID)
    try:
        key = decode_key_cursor(text)
    except CursorError:
        pass
    else:
        assert isinstance(key, str)


@MODERATE
@given(TEXT)
def test_key_cursors_round_trip_and_are_not_event_cursors(key: str) -> None:
    cursor = encode_key_cursor(key)
    assert decode_key_cursor(cursor) == key
    with pytest.raises(CursorError):
        decode_cursor(cursor)


# -- 4. event validation ------------------------------------------------------------------------

IDENTIFIER = st.text(NUL_FREE_CHARS, min_size=1, max_size=40)
LONG_TEXT = st.text(NUL_FREE_CHARS, max_size=60)
EVENT_IDS = st.uuids().flatmap(
    lambda u: st.sampled_from([str(u), str(u).upper(), u.hex, f"urn:uuid:{u}", f"{{{u}}}"])
)
# Whole-minute offsets keep both the local and the UTC time between 1970 and 9999.
EVENT_TIMES = st.datetimes(datetime(1970, 1, 2), datetime(9999, 12, 29), timezones=OFFSETS)
SESSIONS = st.fixed_dictionaries(
    {},
    optional={
        "session_id": st.none() | IDENTIFIER,
        "ip_address": st.none() | st.ip_addresses().map(str),
        "user_agent": st.none() | LONG_TEXT,
    },
)
OPTIONAL_IDENTIFIERS = (
    "principal_type",
    "target_resource_type",
    "target_resource_id",
    "patient_id",
    "purpose_of_use",
    "correlation_id",
)
VALID_EVENTS = st.fixed_dictionaries(
    {
        "action": st.from_regex(r"\A[A-Za-z0-9_-]{1,12}(\.[A-Za-z0-9_-]{1,12}){0,5}\Z"),
        "status": st.sampled_from(get_args(Status)),
        "principal_id": IDENTIFIER,
    },
    optional={
        **{name: st.none() | IDENTIFIER for name in OPTIONAL_IDENTIFIERS},
        "event_id": EVENT_IDS,
        "timestamp": EVENT_TIMES.map(datetime.isoformat),
        "data_classification": st.sampled_from(get_args(Classification)),
        "break_glass": st.booleans(),
        "outcome_description": st.none() | LONG_TEXT,
        "session_context": st.none() | SESSIONS,
        "details": st.none() | DETAILS,
        "priority": st.sampled_from(get_args(Priority)),
    },
)


def expected_record(payload: dict[str, Any], event_id: str) -> dict[str, Any]:
    """What to_record must hold for a valid payload (event_id: the one it generated, if any)."""
    session = payload.get("session_context") or {}
    timestamp = payload.get("timestamp")
    record = {name: payload.get(name) for name in (*OPTIONAL_IDENTIFIERS, "outcome_description")}
    return record | {
        "action": payload["action"],
        "status": payload["status"],
        "principal_id": payload["principal_id"],
        "break_glass": payload.get("break_glass", False),
        "data_classification": payload.get("data_classification", "INTERNAL"),
        "priority": payload.get("priority", "normal"),
        "details": payload.get("details"),
        "event_id": str(uuid.UUID(payload["event_id"])) if "event_id" in payload else event_id,
        "timestamp": format_timestamp(datetime.fromisoformat(timestamp)) if timestamp else None,
        "organization_id": "org-1",
        "api_key_id": KEY_ID,
        "received_at": RECEIVED_AT,
        **{name: session.get(name) for name in ("session_id", "ip_address", "user_agent")},
    }


@MODERATE
@given(VALID_EVENTS)
def test_valid_events_validate_and_their_record_keeps_every_field(payload: dict[str, Any]) -> None:
    record = parse_event(orjson.dumps(payload)).to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)
    expected = expected_record(payload, record["event_id"])
    expected["timestamp"] = expected["timestamp"] or RECEIVED_AT
    assert record == expected
    if "event_id" not in payload:
        assert uuid.UUID(record["event_id"]).version == 7
    assert orjson.loads(canonical_bytes(record)) == record


@st.composite
def events_with_any_field(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid event with one field (or an unknown one) set to arbitrary JSON."""
    payload = draw(VALID_EVENTS)
    field = draw(st.sampled_from([*EventIn.model_fields, "unknown_field"]))
    return {**payload, field: draw(ANY_JSON)}, field


@MODERATE
@given(events_with_any_field())
def test_any_json_in_any_field_validates_or_raises_validation_error(
    case: tuple[dict[str, Any], str],
) -> None:
    payload, field = case
    try:
        event = parse_event(json.dumps(payload).encode())
    except ValidationError as exc:
        if field == "unknown_field":
            assert [e["type"] for e in exc.errors()] == ["extra_forbidden"]
        return
    assert field != "unknown_field"
    # Whatever was accepted can be hashed and queued (the stream entry is a list of records).
    record = event.to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)
    assert orjson.loads(canonical_bytes(record)) == record
    orjson.dumps([record])


def parse_alone(body: bytes) -> EventIn | None:
    try:
        return parse_event(body)
    except ValidationError:
        return None


@MODERATE
@given(st.lists(VALID_EVENTS | events_with_any_field().map(lambda case: case[0]), max_size=5))
def test_bulk_parser_accepts_exactly_what_the_single_parser_accepts(
    payloads: list[dict[str, Any]],
) -> None:
    bodies = [json.dumps(payload).encode() for payload in payloads]
    alone = [parse_alone(body) for body in bodies]
    try:
        events = parse_bulk(b"[" + b",".join(bodies) + b"]")
    except ValidationError as exc:
        failed = {error["loc"][0] for error in exc.errors()}
        assert failed == {index for index, event in enumerate(alone) if event is None}
    else:
        assert events == alone


@MODERATE
@given(st.binary(max_size=300))
def test_arbitrary_bodies_raise_only_validation_errors(body: bytes) -> None:
    with contextlib.suppress(ValidationError):
        parse_event(body)
    with contextlib.suppress(ValidationError):
        parse_bulk(body)


TEXT_LIMITS = {
    "principal_id": (1, 256),
    "patient_id": (1, 256),
    "outcome_description": (0, 4096),
    "session_id": (1, 256),
    "user_agent": (0, 4096),
}


def with_text(field: str, value: str) -> bytes:
    if field in ("session_id", "user_agent"):
        return event_body(session_context={field: value})
    return event_body(**{field: value})


def stored_text(event: EventIn, field: str) -> Any:
    return event.to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)[field]


@MODERATE
@given(st.sampled_from(sorted(TEXT_LIMITS)), st.text(CHARS, max_size=6), CHARS, st.data())
def test_text_fields_keep_any_nul_free_text_within_their_length_limit(
    field: str, head: str, fill: str, data: st.DataObject
) -> None:
    low, high = TEXT_LIMITS[field]
    value = head + fill * data.draw(st.integers(0, high + 2 - len(head)))
    try:
        event = parse_event(with_text(field, value))
    except ValidationError:
        assert "\x00" in value or not low <= len(value) <= high
        return
    assert "\x00" not in value and low <= len(value) <= high
    assert stored_text(event, field) == value


@MODERATE
@given(
    st.sampled_from(sorted(TEXT_LIMITS)), st.integers(0xD800, 0xDFFF), st.integers(0xDC00, 0xDFFF)
)
def test_lone_surrogate_escapes_are_refused_and_pairs_decode(
    field: str, unit: int, low: int
) -> None:
    escape = f"\\u{unit:04x}"
    for lone in (escape, escape + "\\u0041", f"\\u{low:04x}\\ud800"):
        with pytest.raises(ValidationError):
            parse_event(with_text(field, "SURROGATE").replace(b"SURROGATE", lone.encode()))
    if unit <= 0xDBFF:
        pair = (escape + f"\\u{low:04x}").encode()
        event = parse_event(with_text(field, "SURROGATE").replace(b"SURROGATE", pair))
        astral = chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
        assert stored_text(event, field) == astral


ACTION = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")


@MODERATE
@given(
    st.text(st.sampled_from("aZ09_-.\n\x00 é") | CHARS, max_size=20)
    | st.tuples(st.integers(120, 135), st.sampled_from(["", ".", "\n"])).map(
        lambda case: "x" * case[0] + case[1]
    )
)
def test_actions_are_dotted_ascii_words_of_at_most_128_characters(action: str) -> None:
    # A trailing newline must not slip past the pattern's `$`.
    expected = ACTION.fullmatch(action) is not None and len(action) <= 128
    try:
        event = parse_event(event_body(action=action))
    except ValidationError:
        assert not expected
        return
    assert expected
    assert event.to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)["action"] == action


def error_types(body: bytes, max_details_bytes: int = 64 * 1024) -> set[str]:
    """The error types validation reports; empty when the event is valid."""
    try:
        parse_event(body, max_details_bytes)
    except ValidationError as exc:
        return {str(error["type"]) for error in exc.errors()}
    return set()


@MODERATE
@given(st.integers(-(2**70), 2**70) | st.sampled_from([-(2**63) - 1, -(2**63), 2**64 - 1, 2**64]))
def test_details_take_integers_exactly_in_the_64_bit_range(number: int) -> None:
    body = event_body(details={"n": number, "deep": [{"n": number}]})
    if -(2**63) <= number <= 2**64 - 1:
        record = parse_event(body).to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)
        assert record["details"] == {"n": number, "deep": [{"n": number}]}
        assert f'"n":{number}'.encode() in canonical_bytes(record)
    else:
        assert error_types(body) == {"details_unencodable"}


@MODERATE
@given(FINITE, st.integers(309, 4000), st.sampled_from(["", "-"]))
def test_details_take_finite_floats_exactly_and_refuse_the_rest(
    number: float, exponent: int, sign: str
) -> None:
    record = parse_event(event_body(details={"x": number})).to_record(
        "org-1", RECEIVED_AT, api_key_id=KEY_ID
    )
    carried = orjson.loads(canonical_bytes(record))["details"]["x"]
    assert carried == number and math.copysign(1, carried) == math.copysign(1, number)
    for literal in (f"{sign}1e{exponent}", f"{sign}Infinity", "NaN"):
        body = with_details_json(f'{{"x": [{literal}]}}'.encode())
        assert error_types(body) == {"details_unencodable"}


@MODERATE
@given(
    # Shallow, and around the JSON parser's nesting limit (about 200 levels).
    st.integers(1, 40) | st.integers(180, 260),
    st.integers(0, 2**260),
    st.booleans(),
)
def test_deep_details_validate_or_raise_and_what_is_accepted_can_be_hashed(
    depth: int, object_bits: int, bulk: bool
) -> None:
    kinds = [bool(object_bits >> level & 1) for level in range(depth)]
    opening = "".join('{"k":' if is_object else "[" for is_object in kinds)
    closing = "".join("}" if is_object else "]" for is_object in reversed(kinds))
    body = with_details_json(f'{{"d": {opening}0{closing}}}'.encode())
    try:
        events = parse_bulk(b"[" + body + b"]") if bulk else [parse_event(body)]
    except ValidationError:
        return
    record = events[0].to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)
    assert orjson.loads(canonical_bytes(record)) == record
    orjson.dumps([record])


@MODERATE
@given(DETAILS_NO_FLOAT, st.data())
def test_details_are_refused_exactly_when_their_compact_json_is_over_the_limit(
    details: dict[str, Any], data: st.DataObject
) -> None:
    size = len(json.dumps(details, separators=(",", ":"), ensure_ascii=False).encode())
    limit = data.draw(st.integers(max(1, size - 3), size + 3))
    expected = set() if size <= limit else {"details_too_large"}
    assert error_types(event_body(details=details), limit) == expected


ANY_AWARE = st.datetimes(
    datetime(1, 1, 1),
    datetime(9999, 12, 31, 23, 59, 59, 999999),
    timezones=OFFSETS | st.timezones(),
)


@MODERATE
@given(ANY_AWARE)
def test_event_times_are_kept_as_their_instant_between_1970_and_9999(moment: datetime) -> None:
    try:
        utc: datetime | None = moment.astimezone(UTC)
    except OverflowError:
        utc = None
    in_range = utc is not None and EARLIEST <= utc <= LATEST
    offset = moment.utcoffset()
    assert offset is not None
    whole_minutes = offset % timedelta(minutes=1) == timedelta(0)
    body = event_body(timestamp=moment.isoformat())
    try:
        event = parse_event(body)
    except ValidationError:
        # JSON offsets are whole minutes; a local-mean-time offset in seconds is not parsed.
        assert not whole_minutes or error_types(body) == {"timestamp_out_of_range"}
        assert not in_range or not whole_minutes
        return
    assert in_range and utc is not None
    assert event.to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)[
        "timestamp"
    ] == format_timestamp(utc)


@MODERATE
@given(st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31)))
def test_naive_event_times_are_refused(moment: datetime) -> None:
    assert error_types(event_body(timestamp=moment.isoformat())) == {"timezone_aware"}


@MODERATE
@given(st.ip_addresses(), st.sampled_from(["compressed", "exploded", "upper"]))
def test_ip_addresses_are_stored_in_normal_form_and_zone_ids_refused(
    address: IPv4Address | IPv6Address, spelling: str
) -> None:
    text = address.compressed.upper() if spelling == "upper" else getattr(address, spelling)
    event = parse_event(event_body(session_context={"ip_address": text}))
    assert stored_text(event, "ip_address") == str(address)
    assert error_types(event_body(session_context={"ip_address": f"{text}%eth0"})) == {"ip_address"}


def _reference_address(value: str) -> str | None:
    """The normal text by the ipaddress module alone ("zone" for an IPv6 zone id)."""
    try:
        address = ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        return "zone"
    return str(address)


OCTETS = st.integers(0, 999).map(str) | st.from_regex(r"0[0-9]{1,3}", fullmatch=True)
DOTTED = st.lists(OCTETS, min_size=3, max_size=5).map(".".join)


@given(DOTTED | st.ip_addresses().map(str) | st.text(max_size=40))
def test_the_ipv4_shortcut_normalizes_exactly_as_the_ipaddress_module(value: str) -> None:
    expected = _reference_address(value) if len(value) <= 64 else None
    try:
        got: str | None = _plain_address(value)
    except PydanticCustomError as exc:
        got = "zone" if "zone" in str(exc) else None
    assert got == expected


@given(secret=st.binary(min_size=1, max_size=200), message=st.binary(max_size=100))
def test_signatures_are_rfc_2104_hmac_sha256(secret: bytes, message: bytes) -> None:
    """The precomputed-state HMAC agrees with the standard library's for any key length
    (keys longer than a block are hashed first) and any message."""
    key = SigningKey("k", secret)
    assert sign_hash(message, key) == hmac.digest(secret, message, "sha256")
    assert sign_hash(message, key) == sign_hash(message, key)  # the cached states stay fresh
