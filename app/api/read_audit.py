"""Auditing the auditors: every read of the audit log becomes an audit event of the reader's
organization, through the same pipeline (stream, writer, seal) as any other event.

A read is recorded before its answer is sent; when it cannot be recorded, the read fails (503):
no one reads the audit trail without leaving a trace in it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from redis.exceptions import RedisError

from app.core.caller import Caller
from app.core.errors import Unavailable
from app.core.timefmt import format_timestamp
from app.events.model import EventIn
from app.http.deps import resources


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def record_access(
    request: Request, caller: Caller, action: str, query: dict[str, Any], rows: int
) -> None:
    """Queue `audit.<action>` for the caller's organization: who asked, what, how many rows."""
    details = {
        "query": {k: _plain(v) for k, v in query.items() if v is not None},
        "rows": rows,
        "path": request.url.path,
    }
    event = EventIn(
        action=f"audit.{action}",
        status="success",
        principal_id=caller.key_id,
        principal_type="api_key",
        target_resource_type="audit_log",
        data_classification="CONFIDENTIAL",
        details=details,
    )
    res = resources(request)
    received_at = format_timestamp(datetime.now(UTC))
    record = event.to_record(caller.organization_id, received_at, api_key_id=caller.key_id)

    try:
        # Not rated and not held to the organization's quota: a read is refused only when the
        # whole queue is full (503), so an organization's flood does not lock out its auditors.
        await res.recorder.record(caller, record, rated=False, quota=False)
    except RedisError as exc:
        raise Unavailable(
            "this read could not be recorded in the audit trail; retry later",
            headers={"Retry-After": "1"},
        ) from exc
