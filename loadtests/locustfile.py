"""Locust scenarios: services posting single events, services posting bulk, compliance staff
querying. Keys come from the CLI (`python -m app keys create ...`):

    AUDIT_KEY=$(cat .data/dev-api-key) locust -f loadtests/locustfile.py \\
        --host http://127.0.0.1:8000 --headless -u 50 -r 10 -t 1m

Weights: AUDIT_LOCUST_WEIGHTS=single:6,bulk:3,reader:1 (the default).
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

from locust import HttpUser, between, task

KEY = os.environ.get("AUDIT_KEY", "")
BULK_SIZE = int(os.environ.get("AUDIT_LOCUST_BULK_SIZE", "500"))


def _weights() -> dict[str, int]:
    raw = os.environ.get("AUDIT_LOCUST_WEIGHTS", "single:6,bulk:3,reader:1")
    pairs = (part.split(":", 1) for part in raw.split(",") if part)
    return {name.strip(): int(value) for name, value in pairs}


WEIGHTS = _weights()
ACTIONS = ("fhir.patient.read", "fhir.observation.search", "ehr.chart.open", "auth.login")


def audit_event() -> dict[str, Any]:
    patient = f"p-{random.randint(1, 50_000)}"
    return {
        "event_id": str(uuid.uuid4()),
        "action": random.choice(ACTIONS),
        "status": random.choices(("success", "failure"), (95, 5))[0],
        "principal_id": f"user-{random.randint(1, 2_000)}",
        "principal_type": "practitioner",
        "target_resource_type": "Patient",
        "target_resource_id": f"Patient/{patient}",
        "patient_id": patient,
        "data_classification": "PHI",
        "purpose_of_use": "TREAT",
        "session_context": {"session_id": uuid.uuid4().hex, "ip_address": "10.1.2.3"},
        "details": {"fields": ["name", "dob"], "client": "ehr-web"},
    }


class AuditUser(HttpUser):
    abstract = True
    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {KEY}"


class SingleEventService(AuditUser):
    weight = WEIGHTS.get("single", 6)

    @task
    def post_event(self) -> None:
        self.client.post("/events", json=audit_event(), name="POST /events")


class BulkService(AuditUser):
    weight = WEIGHTS.get("bulk", 3)

    @task
    def post_bulk(self) -> None:
        batch = [audit_event() for _ in range(BULK_SIZE)]
        self.client.post("/events/bulk", json=batch, name="POST /events/bulk")


class ComplianceReader(AuditUser):
    weight = WEIGHTS.get("reader", 1)
    wait_time = between(0.5, 2.0)

    @task(3)
    def patient_history(self) -> None:
        patient = f"p-{random.randint(1, 50_000)}"
        self.client.get("/events", params={"patient_id": patient}, name="GET /events?patient_id")

    @task(1)
    def recent(self) -> None:
        self.client.get("/events", params={"limit": 100}, name="GET /events")
