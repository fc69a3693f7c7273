"""Property-based tests of keyset cursors: they round-trip for their own order only, and any
foreign text gives a position or a CursorError."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.read.cursors import (
    CursorError,
    decode_cursor,
    decode_key_cursor,
    encode_cursor,
    encode_key_cursor,
)
from tests.strategies import ANY_JSON, CHARS, MODERATE, OFFSETS, TEXT

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
    """A key the API takes as an identifier (1-256 characters, no NUL) round-trips; any other
    key in a cursor (which only a forged cursor can carry) is refused like a foreign cursor."""
    cursor = encode_key_cursor(key)
    if key and "\x00" not in key:
        assert decode_key_cursor(cursor) == key
    else:
        with pytest.raises(CursorError):
            decode_key_cursor(cursor)
    with pytest.raises(CursorError):
        decode_cursor(cursor)
