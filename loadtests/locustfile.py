"""Locust scenarios: what a deployment sees in a day.

- SingleEventService: an EHR or FHIR server posting each audit event as it happens;
- BulkService: a system that buffers events and posts them in bulk;
- ComplianceAnalyst: privacy staff searching (GET /events with filters, following a cursor
  now and then) and running PHI access reports (per patient, per principal, summaries);
- ComplianceExporter: staff exporting small ranges (a patient's last day, the last minutes) as
  CSV, NDJSON or FHIR.

The events posted and the questions asked draw from the same pools of patients and principals,
so reports find what the services wrote. Keys are made with the CLI:

    python -m app keys create --org acme --scopes ingest,read --name locust   # key: last line

Environment: AUDIT_KEY (one key for everything), or AUDIT_INGEST_KEY and AUDIT_READ_KEY;
LOCUST_WEIGHT_SINGLE, LOCUST_WEIGHT_BULK, LOCUST_WEIGHT_QUERY, LOCUST_WEIGHT_EXPORT (relative
shares of the users, default 6, 2, 2, 1); LOCUST_BULK_SIZE (events per bulk request, 500).
`make locust` runs it headless and writes locust-report/; see the README, Load tests.
"""

from __future__ import annotations

import os
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from locust import HttpUser, between, task
from locust.exception import StopUser

PATIENTS = 50_000
PRINCIPALS = 2_000
ACTIONS = (
    "fhir.patient.read",
    "fhir.observation.search",
    "fhir.medicationrequest.create",
    "ehr.chart.open",
    "auth.login",
)
PURPOSES = ("TREAT", "TREAT", "TREAT", "TREAT", "HPAYMT", "HOPERAT")
EXPORT_FORMATS = ("csv", "ndjson", "fhir")


def _weight(name: str, default: int) -> int:
    return int(os.environ.get(f"LOCUST_WEIGHT_{name}", default))


def _key(scope: str) -> str:
    return os.environ.get(f"AUDIT_{scope}_KEY") or os.environ.get("AUDIT_KEY", "")


def patient() -> str:
    return f"p-{random.randint(1, PATIENTS)}"


def principal() -> str:
    return f"user-{random.randint(1, PRINCIPALS)}"


def audit_event() -> dict[str, Any]:
    subject = patient()
    action = random.choice(ACTIONS)
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "action": action,
        "status": random.choices(("success", "failure"), (95, 5))[0],
        "principal_id": principal(),
        "principal_type": "practitioner",
        "correlation_id": f"req-{uuid.uuid4().hex[:12]}",
        "session_context": {"session_id": uuid.uuid4().hex, "ip_address": "10.1.2.3"},
    }
    if action != "auth.login":
        event |= {
            "patient_id": subject,
            "target_resource_type": "Patient",
            "target_resource_id": f"Patient/{subject}",
            "data_classification": "PHI",
            "purpose_of_use": random.choice(PURPOSES),
            "break_glass": random.random() < 0.002,
            "details": {"fields": ["name", "dob"], "client": "ehr-web"},
        }
    return event


def since(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


class AuditUser(HttpUser):
    abstract = True
    scope = "INGEST"

    def on_start(self) -> None:
        key = _key(self.scope)
        if not key:
            raise StopUser(f"set AUDIT_KEY or AUDIT_{self.scope}_KEY")
        self.client.headers["Authorization"] = f"Bearer {key}"


class SingleEventService(AuditUser):
    weight = _weight("SINGLE", 6)
    wait_time = between(0.05, 0.25)

    @task
    def post_event(self) -> None:
        self.client.post("/events", json=audit_event(), name="POST /events")


class BulkService(AuditUser):
    weight = _weight("BULK", 2)
    wait_time = between(1.0, 3.0)
    bulk_size = int(os.environ.get("LOCUST_BULK_SIZE", "500"))

    @task
    def post_bulk(self) -> None:
        batch = [audit_event() for _ in range(self.bulk_size)]
        self.client.post("/events/bulk", json=batch, name="POST /events/bulk")


class ComplianceAnalyst(AuditUser):
    weight = _weight("QUERY", 2)
    wait_time = between(2.0, 6.0)
    scope = "READ"

    def search(self, name: str, params: dict[str, Any]) -> None:
        response = self.client.get("/events", params=params, name=name)
        cursor = response.json().get("next_cursor") if response.ok else None
        if cursor and random.random() < 0.3:  # some look at the next page
            self.client.get(
                "/events", params={**params, "cursor": cursor}, name=f"{name} (next page)"
            )

    @task(3)
    def patient_history(self) -> None:
        self.search("GET /events?patient_id", {"patient_id": patient(), "limit": 50})

    @task(2)
    def principal_last_day(self) -> None:
        params = {"principal_id": principal(), "start": since(days=1)}
        self.search("GET /events?principal_id&start", params)

    @task(1)
    def break_glass_review(self) -> None:
        self.search("GET /events?break_glass", {"break_glass": "true", "start": since(days=7)})

    @task(1)
    def failed_logins(self) -> None:
        params = {"action_prefix": "auth.", "status": "failure", "start": since(hours=1)}
        self.search("GET /events?action_prefix&status", params)

    @task(2)
    def patient_report(self) -> None:
        params = {"start": since(days=30), "summary": random.choice(("true", "false"))}
        self.client.get(
            f"/phi-access/patients/{patient()}", params=params, name="GET /phi-access/patients"
        )

    @task(1)
    def principal_report(self) -> None:
        params = {"start": since(days=1), "summary": random.choice(("true", "false"))}
        self.client.get(
            f"/phi-access/principals/{principal()}",
            params=params,
            name="GET /phi-access/principals",
        )


class ComplianceExporter(AuditUser):
    weight = _weight("EXPORT", 1)
    wait_time = between(5.0, 15.0)
    scope = "READ"

    @task(2)
    def patient_disclosures(self) -> None:
        fmt = random.choice(EXPORT_FORMATS)
        params = {"patient_id": patient(), "start": since(days=1), "format": fmt}
        self.client.get("/events/export", params=params, name=f"GET /events/export patient {fmt}")

    @task(1)
    def last_minutes(self) -> None:
        params = {"start": since(minutes=2), "format": "ndjson"}
        self.client.get("/events/export", params=params, name="GET /events/export 2 min ndjson")
