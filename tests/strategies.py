"""Hypothesis strategies and helpers shared by the property-based tests: JSON that stresses
encoders, canonical records, times at any offset, event bodies parsed as the ingest routes do."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

from hypothesis import settings
from hypothesis import strategies as st

from app.core.timefmt import format_timestamp
from app.events.fields import Classification, Priority, Status
from app.events.model import EVENT_LIST, EventIn

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
