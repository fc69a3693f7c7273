"""The Python client of audit-ingest: events with client-side ids and times, sync and async
clients with retries that honour Retry-After, a disk spool, and background batchers."""

from audit_ingest_client._batcher import AsyncBatcher, Batcher
from audit_ingest_client._client import (
    AsyncAuditClient,
    AuditClient,
    AuditError,
    Retry,
    Spool,
    Undelivered,
)
from audit_ingest_client._event import Event, SessionContext, uuid7

__all__ = [
    "AsyncAuditClient",
    "AsyncBatcher",
    "AuditClient",
    "AuditError",
    "Batcher",
    "Event",
    "Retry",
    "SessionContext",
    "Spool",
    "Undelivered",
    "uuid7",
]
