"""Opaque keyset cursors: base64url of the JSON [timestamp, event_id, order] of the last row. A read
service takes the cursor a reader gives back and answers with the next one; a bad one is
InvalidCursor (400)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime

import orjson
from pydantic import TypeAdapter

from app.core.errors import InvalidCursor
from app.core.timefmt import format_timestamp, parse_timestamp
from app.events.fields import Identifier


class CursorError(InvalidCursor, ValueError):
    """A cursor this service did not make: the reader's error (400 invalid_cursor)."""


def encode_cursor(timestamp: datetime, event_id: uuid.UUID, order: str = "desc") -> str:
    raw = orjson.dumps([format_timestamp(timestamp), str(event_id), order])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, order: str = "desc") -> tuple[datetime, uuid.UUID]:
    """The keyset position; refused when the cursor was issued for the other order."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        timestamp, event_id, issued_for = orjson.loads(raw)
        if not all(isinstance(part, str) for part in (timestamp, event_id, issued_for)):
            raise TypeError("cursor parts must be strings")
        if issued_for != order:
            raise ValueError("cursor was issued for the other order")
        moment = parse_timestamp(timestamp).astimezone(UTC)
        return moment, uuid.UUID(event_id)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise CursorError("cursor is not one this service issued") from exc


def encode_key_cursor(key: str) -> str:
    """A cursor over rows ordered by a text key (the summary reports)."""
    return base64.urlsafe_b64encode(orjson.dumps(["key", key])).rstrip(b"=").decode()


# A summary's key is a patient or principal id: what the API takes as one, nothing else (a
# forged cursor must not carry a NUL, which PostgreSQL refuses, into a query).
COUNTERPART = TypeAdapter(Identifier)


def decode_key_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, key = orjson.loads(raw)
        if tag != "key" or not isinstance(key, str):
            raise ValueError("not a key cursor")
        return COUNTERPART.validate_python(key)  # a ValidationError is a ValueError
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise CursorError("cursor is not one this service issued") from exc
