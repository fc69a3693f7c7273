"""Alerts are evidence: each is recorded as a sealed `audit.alert.raised` event of its
organization.

An outbox: alerts not yet recorded (recorded_at NULL) are queued (app.queue.recorder, as the
service's other records of its own), then marked recorded. A process that stops between the two
queues them again; the event is the same each time (its id uuid5 of the alert id, its time the
alert's raised_at, every field from the stored alert), so the writers store it once and drop the
repeat by its unique key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson

from app.core.caller import Caller
from app.core.metrics import Metrics
from app.core.timefmt import format_timestamp
from app.events.record import EventRecord
from app.queue.recorder import Recorder
from app.watch.cases import RAISED, raised_event_id
from app.watch.sql import MARK_RECORDED, UNRECORDED

log = logging.getLogger(__name__)

WATCH_PRINCIPAL = "watch"  # the principal of the service's alert events
RECORDED_AT_ONCE = 200


def alert_record(alert: Mapping[str, Any]) -> EventRecord:
    """The audit.alert.raised event of a stored alert (a row of app.watch.sql.UNRECORDED).
    The patient is named in its details, not as its patient_id: the alert is not an access
    to the patient's record, and reports of who accessed a chart must not list it."""
    alert_id = alert["alert_id"]
    raised = format_timestamp(alert["raised_at"])
    return {
        "action": RAISED,
        "api_key_id": None,
        "break_glass": False,
        "correlation_id": str(alert_id),
        "data_classification": "CONFIDENTIAL",
        "details": {
            "alert_id": str(alert_id),
            "rule": alert["rule"],
            "severity": alert["severity"],
            "subject": alert["subject"],
            "principal_id": alert["principal_id"],
            "patient_id": alert["patient_id"],
            "window_start": format_timestamp(alert["window_start"]),
            "window_end": format_timestamp(alert["window_end"]),
            "event_ids": [str(e) for e in alert["event_ids"]],
            "facts": orjson.loads(alert["details"]),
        },
        "event_id": str(raised_event_id(alert_id)),
        "ip_address": None,
        "organization_id": alert["organization_id"],
        "outcome_description": f"{alert['rule']} alert raised ({alert['severity']})",
        "patient_id": None,
        "principal_id": WATCH_PRINCIPAL,
        "principal_type": "service",
        "priority": "high",
        "purpose_of_use": None,
        "received_at": raised,
        "session_id": None,
        "status": "success",
        "target_resource_id": str(alert_id),
        "target_resource_type": "Alert",
        "timestamp": raised,
        "user_agent": None,
    }


class Outbox:
    def __init__(self, recorder: Recorder, metrics: Metrics) -> None:
        self.recorder = recorder
        self.metrics = metrics

    async def record(self, record: EventRecord) -> None:
        """Queue one alert event as a record the service makes itself, of the alert's
        organization: held to the queue's depth, not to a key's rate or the organization's
        quota (alerts are few, and one refused is queued again later)."""
        caller = Caller(WATCH_PRINCIPAL, record["organization_id"], frozenset())
        await self.recorder.record(caller, record, rated=False, quota=False)

    async def flush(self, conn: asyncpg.Connection) -> int:
        """Queue the oldest alerts not yet recorded, and mark those queued; how many. A refusal
        (the queue full, Redis down) stops the round: the rest wait for the next."""
        alerts = await conn.fetch(UNRECORDED, RECORDED_AT_ONCE)
        queued = []
        try:
            for alert in alerts:
                await self.record(alert_record(alert))
                queued.append(alert["alert_id"])
        finally:
            if queued:
                await conn.execute(MARK_RECORDED, queued)
                self.metrics.watch_recorded.inc(len(queued))
        return len(queued)
