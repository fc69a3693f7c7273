"""The Python client of audit-ingest: events with client-side ids and times, sync and async
clients with retries that honour Retry-After, a disk spool, and background batchers."""

from audit_ingest_client._batcher import AsyncBatcher, Batcher
from audit_ingest_client._client import (
    AccessError,
    AsyncAuditClient,
    AuditClient,
    AuditError,
    EventsRefused,
    Refusal,
    Retry,
    Spool,
    Undelivered,
)
from audit_ingest_client._event import Event, SessionContext, uuid7

__all__ = [
    "AccessError",
    "AsyncAuditClient",
    "AsyncBatcher",
    "AuditClient",
    "AuditError",
    "Batcher",
    "Event",
    "EventsRefused",
    "Refusal",
    "Retry",
    "SessionContext",
    "Spool",
    "Undelivered",
    "uuid7",
]
