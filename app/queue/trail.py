"""Auditing the auditors: every read of the audit log becomes an audit event of the reader's
organization, through the same pipeline (stream, writer, seal) as any other event.

A read is recorded before its answer is sent; when it cannot be recorded, the read fails (503):
no one reads the audit trail without leaving a trace in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from app.core.caller import Caller
from app.core.errors import Unavailable
from app.core.timefmt import format_timestamp
from app.events.model import EventIn
from app.queue.recorder import Recorder


@dataclass(frozen=True, slots=True)
class Reader:
    """Who reads the audit log, and the path they asked it by (the API's or the console's):
    the read's own audit record names both."""

    caller: Caller
    path: str


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def record_read(
    recorder: Recorder, reader: Reader, action: str, query: Mapping[str, Any], rows: int
) -> None:
    """Queue `audit.<action>` for the reader's organization: who asked, what, how many rows."""
    caller = reader.caller
    details = {
        "query": {k: _plain(v) for k, v in query.items() if v is not None},
        "rows": rows,
        "path": reader.path,
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
    received_at = format_timestamp(datetime.now(UTC))
    record = event.to_record(caller.organization_id, received_at, api_key_id=caller.key_id)
    try:
        # Not rated and not held to the organization's quota: a read is refused only when the
        # whole queue is full (503), so an organization's flood does not lock out its auditors.
        await recorder.record(caller, record, rated=False, quota=False)
    except RedisError as exc:
        raise Unavailable(
            "this read could not be recorded in the audit trail; retry later",
            headers={"Retry-After": "1"},
        ) from exc
