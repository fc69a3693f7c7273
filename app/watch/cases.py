"""What the rules read and what they raise: an access (the columns of one stored event the rules
need), a case's key (organization, rule, subject, window) and its deterministic alert id, and the
alert gathered from the accesses that raised it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

# uuid5 namespace of alert ids; an alert's audit.alert.raised event id is uuid5(alert id, action).
ALERTS = uuid.UUID("1c6c4f0e-7a52-5b8e-9d3a-5a7e0c2f4b61")
RAISED = "audit.alert.raised"

MAX_EVENT_IDS = 100  # the events an alert names; `events` in its details counts them all


class Access(NamedTuple):
    """One stored event as the rules read it (app.watch.sql.ACCESSES selects these columns in
    this order). Times are seconds since the epoch."""

    event_id: uuid.UUID
    organization_id: str
    at: float  # the event's time
    received: float  # when the service received it
    action: str
    status: str
    principal_id: str
    principal_type: str | None
    patient_id: str | None
    classification: str
    break_glass: bool
    ip_address: str | None  # of failures only
    details: str | None  # JSON text, of the actions the bulk export rule reads only


class CaseKey(NamedTuple):
    """What makes a case one case: found again (another detector, a restart), it is the same."""

    organization_id: str
    rule: str
    principal_id: str | None
    patient_id: str | None
    ip_address: str | None
    window_start: int  # microseconds since the epoch
    window_end: int

    @property
    def subject(self) -> str:
        parts = []
        if self.principal_id is not None:
            parts.append(f"principal {self.principal_id}")
        if self.patient_id is not None:
            parts.append(f"patient {self.patient_id}")
        if self.ip_address is not None:
            parts.append(f"address {self.ip_address}")
        return ", ".join(parts)

    def alert_id(self) -> uuid.UUID:
        return alert_id(self)


def alert_id(key: CaseKey) -> uuid.UUID:
    """uuid5 of the case's key, encoded without ambiguity (a JSON array)."""
    return uuid.uuid5(ALERTS, orjson.dumps(list(key)).decode())


def raised_event_id(alert: uuid.UUID) -> uuid.UUID:
    """The id of the audit.alert.raised event recording an alert: the same for every attempt."""
    return uuid.uuid5(alert, RAISED)


def micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def moment(micros_since_epoch: int) -> datetime:
    seconds, fraction = divmod(micros_since_epoch, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=fraction)


def iso(seconds: float) -> str:
    return moment(micros(seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Draft:
    """An alert being gathered from the accesses of one batch of entries."""

    key: CaseKey
    severity: str
    facts: dict[str, Any]
    event_ids: list[uuid.UUID] = field(default_factory=list)
    events: int = 0
    first_at: float = float("inf")
    last_at: float = float("-inf")
    first_received: float = float("inf")  # of the events that raised it: the alert's latency

    def add(self, event_id: uuid.UUID, at: float, received: float) -> None:
        """One more access that raised it."""
        self.events += 1
        if len(self.event_ids) < MAX_EVENT_IDS:
            self.event_ids.append(event_id)
        if at < self.first_at:
            self.first_at = at
        if at > self.last_at:
            self.last_at = at
        if received < self.first_received:
            self.first_received = received

    def add_evidence(self, evidence: list[tuple[float, uuid.UUID]], received: float) -> None:
        """Events named as a whole (a window's distinct patients, a run of failures)."""
        self.events += len(evidence)
        for at, event_id in evidence[-MAX_EVENT_IDS:]:
            self.event_ids.append(event_id)
            self.first_at = min(self.first_at, at)
            self.last_at = max(self.last_at, at)
        self.first_received = min(self.first_received, received)

    def row(self) -> dict[str, Any]:
        """The alert as app.watch.sql.INSERT_ALERTS takes it (one element of a JSON array)."""
        key = self.key
        return {
            "alert_id": str(key.alert_id()),
            "organization_id": key.organization_id,
            "rule": key.rule,
            "severity": self.severity,
            "subject": key.subject,
            "principal_id": key.principal_id,
            "patient_id": key.patient_id,
            "window_start": iso(key.window_start / 1_000_000),
            "window_end": iso(key.window_end / 1_000_000),
            "event_ids": [str(e) for e in self.event_ids],
            "details": {
                **self.facts,
                "events": self.events,
                "first_at": iso(self.first_at),
                "last_at": iso(self.last_at),
            },
        }
