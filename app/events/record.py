"""The record of one event: what the API queues in the stream, the writer hashes, signs and
stores, and the ledger's canonical form covers (app.ledger.hashing.CANONICAL_FIELDS is its keys).

Its values are JSON's: the ids and times as text (times in the canonical UTC form the API writes,
`YYYY-MM-DDTHH:MM:SS.ffffffZ`), `details` the client's object. The session context is flattened
into `session_id`, `ip_address` and `user_agent`, as audit_log stores it.
"""

from __future__ import annotations

from typing import Any, TypedDict

from app.events.fields import Classification, Priority, Status


class EventRecord(TypedDict):
    """One event as queued and stored, every field present (None when not sent); the stored
    row adds only its integrity columns (hash, signature, key id) and its place in the log."""

    action: str
    api_key_id: str | None  # the key that sent it; None for the service's own records
    break_glass: bool
    correlation_id: str | None
    data_classification: Classification
    details: dict[str, Any] | None
    event_id: str
    ip_address: str | None
    organization_id: str
    outcome_description: str | None
    patient_id: str | None
    principal_id: str
    principal_type: str | None
    priority: Priority
    purpose_of_use: str | None
    received_at: str
    session_id: str | None
    status: Status
    target_resource_id: str | None
    target_resource_type: str | None
    timestamp: str
    user_agent: str | None
