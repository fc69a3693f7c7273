"""Event ids are UUIDv7 in time order; cursors have a golden value and refuse foreign text."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from app.events.ids import new_event_id
from app.read.cursors import CursorError, decode_cursor, encode_cursor


def test_event_ids_are_uuid7_and_sort_by_time() -> None:
    ids = [uuid.UUID(new_event_id()) for _ in range(200)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)
    assert len(set(ids)) == len(ids)


def test_cursor_round_trip_and_golden_value() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    event_id = uuid.UUID("01936f4e-8a2b-7c3d-9e4f-a1b2c3d4e5f6")
    cursor = encode_cursor(moment, event_id)
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert raw == b'["2026-01-02T03:04:05.678901Z","01936f4e-8a2b-7c3d-9e4f-a1b2c3d4e5f6","desc"]'
    assert decode_cursor(cursor) == (moment, event_id)
    with pytest.raises(CursorError):
        decode_cursor(cursor, "asc")


@pytest.mark.parametrize("bad", ["", "!!!", "bm90IGpzb24", "WzFd", "WyJ4IiwieSJd"])
def test_foreign_cursors_are_refused(bad: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(bad)
