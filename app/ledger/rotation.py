"""Key retirements recorded in the log.

A key's retirement takes effect at a position of its chain's log, not at a time a row carries:
when a configured retirement (`id:secret@retired-at`) has passed, the writers seal into every
chain a service event `audit.key.retired` of the operations organization, details
{"ring": "events" | "ledger", "key_id", "retired_at"}, HMAC-signed with the active event key in a
batch whose entry the active ledger key signs. Verification, walking a chain in order, takes
such an event (its hash and signature checking, its signer not retired) as retiring that key for
every later batch of the chain: whatever times they carry, an event signed with it or an entry
signed with it after that position is `retired_key_used`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from app.core.config import SigningKey
from app.core.timefmt import format_timestamp
from app.events.record import EventRecord

RETIREMENT_ACTION = "audit.key.retired"

RINGS = ("events", "ledger")  # AUDIT_SIGNING_KEYS, AUDIT_LEDGER_KEYS

PRINCIPAL = "key-rotation"


def retirement_record(ring: str, key: SigningKey, organization: str, now: datetime) -> EventRecord:
    """The canonical record (app.ledger.hashing) of the event retiring `key` of `ring`."""
    if ring not in RINGS or key.retired_at is None:
        raise ValueError(f"key {key.key_id!r} of ring {ring!r} is not a retired key")
    moment = format_timestamp(now)
    return {
        "action": RETIREMENT_ACTION,
        "api_key_id": None,
        "break_glass": False,
        "correlation_id": None,
        "data_classification": "INTERNAL",
        "details": {
            "ring": ring,
            "key_id": key.key_id,
            "retired_at": format_timestamp(key.retired_at),
        },
        "event_id": str(uuid.uuid4()),
        "ip_address": None,
        "organization_id": organization,
        "outcome_description": f"Key {key.key_id} of the {ring} ring retired from this position",
        "patient_id": None,
        "principal_id": PRINCIPAL,
        "principal_type": "service",
        "priority": "high",
        "purpose_of_use": None,
        "received_at": moment,
        "session_id": None,
        "status": "success",
        "target_resource_id": key.key_id,
        "target_resource_type": "signing_key",
        "timestamp": moment,
        "user_agent": None,
    }


def retired_by(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(ring, key id) that a stored event retires, when it is a key retirement (whether it is
    the service's own, signed by a key still valid, is for the caller to check)."""
    if row["action"] != RETIREMENT_ACTION:
        return None
    details = row["details"]
    if isinstance(details, str | bytes):
        try:
            details = orjson.loads(details)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(details, dict):
        return None
    ring, key_id = details.get("ring"), details.get("key_id")
    if ring not in RINGS or not isinstance(key_id, str) or not key_id:
        return None
    return ring, key_id


@dataclass(frozen=True, slots=True)
class Retirement:
    """A key retired by the event `event_id`, sealed in the entry `seq` of its chain, after
    which the chain's log has `tree_size` leaves."""

    ring: str
    key_id: str
    seq: int
    tree_size: int
    event_id: str

    def describe(self) -> str:
        return (
            f"key {self.key_id!r} retired by the log at seq {self.seq} "
            f"(tree size {self.tree_size}, event {self.event_id})"
        )


@dataclass(slots=True)
class KeyPositions:
    """The keys a chain's log has retired so far, by ring (the first retirement of each)."""

    retired: dict[str, dict[str, Retirement]] = field(
        default_factory=lambda: {ring: {} for ring in RINGS}
    )

    def take(self, retirement: Retirement) -> None:
        self.retired[retirement.ring].setdefault(retirement.key_id, retirement)

    def of(self, ring: str, key_id: str) -> Retirement | None:
        return self.retired[ring].get(key_id)
