"""Property-based tests of event validation as the ingest routes run it: what is accepted keeps
every field, anything else raises a validation error, never another exception."""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, get_args

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from app.core.timefmt import format_timestamp
from app.events.fields import EARLIEST, LATEST, Classification, Priority, Status, _plain_address
from app.events.json_bounds import json_depth, json_values
from app.events.model import EventIn
from app.ledger.hashing import (
    canonical_bytes,
)
from tests.strategies import (
    ANY_JSON,
    CHARS,
    DETAILS,
    DETAILS_NO_FLOAT,
    FINITE,
    KEY_ID,
    MODERATE,
    NUL_FREE_CHARS,
    OFFSETS,
    RECEIVED_AT,
    event_body,
    parse_bulk,
    parse_event,
    with_details_json,
)

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
    record: Mapping[str, Any] = event.to_record("org-1", RECEIVED_AT, api_key_id=KEY_ID)
    return record[field]


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


def test_json_depth_counts_the_brackets_outside_strings() -> None:
    assert json_depth(b'"[[{"') == 0
    assert json_depth(b'{"a": "[[[{{", "b": [[1], {"c": []}]}') == 4
    assert json_depth(b'{"a": "\\"[[", "b": {}}') == 2
    assert json_depth(b"[" * 300 + b"]" * 300) == 300


@pytest.mark.parametrize(
    "tail",
    [b'"' + b'\\"' * 32_768, b'"' + b'\\"' * 32_768 + b"\\", b'"' + b"\\\n" * 32_768],
    ids=["escaped quotes", "a lone backslash at the end", "escaped newlines"],
)
def test_strings_left_open_are_measured_in_one_pass(tail: bytes) -> None:
    """A string that never ends (escaped quotes to the end of a 64 KiB body) is measured in one
    pass: the depth and value counts run on the ingest path, where a scan restarted at every
    quote took seconds for 32 KiB and hours for 1 MiB, blocking the event loop for every
    tenant. The bound is a hundred times what one pass takes."""
    body = b"[" * 201 + tail
    started = time.perf_counter()
    assert json_depth(body) == 201
    assert json_values(body, 10) == 202  # past the rough count: strings are blanked
    assert time.perf_counter() - started < 2.0


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
