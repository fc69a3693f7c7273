"""Opaque keyset cursors: base64url of the JSON pair [timestamp, event_id] of the last row."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime

import orjson

from app.integrity import format_timestamp, parse_timestamp


class CursorError(ValueError):
    pass


def encode_cursor(timestamp: datetime, event_id: uuid.UUID) -> str:
    raw = orjson.dumps([format_timestamp(timestamp), str(event_id)])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        timestamp, event_id = orjson.loads(raw)
        if not isinstance(timestamp, str) or not isinstance(event_id, str):
            raise TypeError("cursor parts must be strings")
        moment = parse_timestamp(timestamp).astimezone(UTC)
        return moment, uuid.UUID(event_id)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise CursorError("cursor is not one this service issued") from exc
