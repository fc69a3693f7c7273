"""What an event said, as a digest the stored row must match: every field that came from the
client (those it left out at the service's defaults), the timestamp as an instant, details as
canonical JSON, the address in its normal form. Columns the server fills (received_at, hash,
signature, key, batch, and any added later) take no part, so they cannot make a row differ.

The driver keeps one 16-byte digest per event it sent instead of the event: a full run sends
about 150,000 of them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any

import orjson

# audit_log's columns that hold what the client sent, besides event_id, timestamp, the session
# (nested in the event, flat in the row) and details.
CLIENT_COLUMNS = (
    "action",
    "status",
    "principal_id",
    "principal_type",
    "target_resource_type",
    "target_resource_id",
    "patient_id",
    "data_classification",
    "purpose_of_use",
    "break_glass",
    "outcome_description",
    "correlation_id",
    "priority",
)
SESSION_COLUMNS = ("session_id", "ip_address", "user_agent")
DEFAULTS: dict[str, Any] = {
    "data_classification": "INTERNAL",
    "break_glass": False,
    "priority": "normal",
}
STORED_COLUMNS = ("timestamp", *CLIENT_COLUMNS, *SESSION_COLUMNS, "details")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

Content = tuple[Any, ...]


def sent_content(event: Mapping[str, Any]) -> Content:
    """An event as the client sent it (with its timestamp: the driver always sends one)."""
    session = event.get("session_context") or {}
    return (
        microseconds(datetime.fromisoformat(event["timestamp"])),
        *(event.get(name, DEFAULTS.get(name)) for name in CLIENT_COLUMNS),
        session.get("session_id"),
        normal_address(session.get("ip_address")),
        session.get("user_agent"),
        canonical_json(event.get("details")),
    )


def stored_content(row: Mapping[str, Any]) -> Content:
    """A row of audit_log with STORED_COLUMNS (details as JSON text or parsed)."""
    details = row["details"]
    return (
        microseconds(row["timestamp"]),
        *(row[name] for name in CLIENT_COLUMNS),
        row["session_id"],
        normal_address(row["ip_address"]),
        row["user_agent"],
        canonical_json(orjson.loads(details) if isinstance(details, str | bytes) else details),
    )


def digest(content: Content) -> bytes:
    return hashlib.blake2b(orjson.dumps(content), digest_size=16).digest()


def microseconds(moment: datetime) -> int:
    """The instant, whatever its offset: microseconds since 1970 (PostgreSQL's precision)."""
    return (moment - EPOCH) // MICROSECOND


def normal_address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ip_address(value))
    except ValueError:
        return value


def canonical_json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
