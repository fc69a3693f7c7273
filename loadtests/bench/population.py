"""The synthetic hospital whose audit events the bench posts.

100,000 patients, 6,000 staff and 200 service accounts. Who is in an event is drawn with a skew,
weight 1 / rank^s: a few are hot and most appear now and then. Patients s = 0.8 (the hottest 1%,
inpatients whose charts many people open, in about a third of the events about a patient; most
of the rest once or twice in a pool of 100,000 events); staff s = 0.7 (the busiest person in
about 2% of the events); service accounts (interface engines, billing, portals) s = 1.0, 30% of
all events. Ids are scrambled so the hot ones do not sit side by side in an index. A person's
sessions (three shifts or workstations), addresses (4% IPv6) and user agents follow from who
they are; actions (30, by the principal's kind), statuses (2.5% failures, more at sign-in),
classifications, purposes of use, target resources (an id each), correlation ids (a quarter
shared with the event before, as one request that touched several resources) and details (none,
the fields read, a search, a list of resources, now and then an export of several KB) are drawn
per event; break-glass access is one staff event about a patient in a thousand.

Everything is drawn from a seeded generator, so a seed gives the same events on every host.
Event ids and times are left out: bodies get them as they are sent (loadtests.bench.payloads).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from typing import Any

PATIENTS = 100_000
STAFF = 6_000
SERVICES = 200
PATIENT_SKEW = 0.8
STAFF_SKEW = 0.7
SERVICE_SKEW = 1.0
SERVICE_SHARE = 0.3  # of all events
BREAK_GLASS_SHARE = 0.001  # of staff events about a patient
SAME_REQUEST_SHARE = 0.25  # events that share the correlation id of the one before
SESSIONS_PER_STAFF = 3  # shifts and workstations a person is seen from
IPV6_SHARE = 0.04  # of staff sessions

Event = dict[str, Any]
# (action, FHIR type of its target or None, whether it is about a patient, weight)
Action = tuple[str, str | None, bool, float]


def cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def draw_index(rng: random.Random, cum_weights: Sequence[float]) -> int:
    """An index drawn in proportion to its weight (random.choices without its overhead)."""
    return bisect.bisect_right(cum_weights, rng.random() * cum_weights[-1])


class Weighted:
    """Values drawn in proportion to their weights."""

    def __init__(self, pairs: Sequence[tuple[str, float]]) -> None:
        self.values = [value for value, _ in pairs]
        self.cum_weights = cumulative([weight for _, weight in pairs])

    def draw(self, rng: random.Random) -> str:
        return self.values[draw_index(rng, self.cum_weights)]


STAFF_ACTIONS: tuple[Action, ...] = (
    ("ehr.chart.open", "Patient", True, 16),
    ("fhir.patient.read", "Patient", True, 14),
    ("fhir.observation.search", "Observation", True, 12),
    ("fhir.observation.read", "Observation", True, 8),
    ("fhir.medicationrequest.read", "MedicationRequest", True, 6),
    ("fhir.encounter.read", "Encounter", True, 5),
    ("fhir.documentreference.read", "DocumentReference", True, 5),
    ("fhir.condition.search", "Condition", True, 4),
    ("fhir.diagnosticreport.read", "DiagnosticReport", True, 3),
    ("fhir.allergyintolerance.read", "AllergyIntolerance", True, 3),
    ("fhir.medicationrequest.create", "MedicationRequest", True, 2),
    ("ehr.note.sign", "DocumentReference", True, 2),
    ("ehr.order.create", "ServiceRequest", True, 2),
    ("fhir.immunization.read", "Immunization", True, 1),
    ("fhir.patient.update", "Patient", True, 1),
    ("ehr.chart.print", "Patient", True, 0.3),
    ("phi.export.download", "Binary", True, 0.1),
    ("auth.login", None, False, 4),
    ("auth.logout", None, False, 2.5),
    ("auth.mfa.verify", None, False, 1),
    ("ehr.worklist.view", "List", False, 3),
    ("report.run", "Measure", False, 0.4),
)
SERVICE_ACTIONS: tuple[Action, ...] = (
    ("hl7.oru.r01", "Observation", True, 8),
    ("fhir.observation.create", "Observation", True, 6),
    ("hl7.adt.a08", "Patient", True, 5),
    ("fhir.patient.read", "Patient", True, 4),
    ("fhir.claim.create", "Claim", True, 2),
    ("fhir.coverage.read", "Coverage", True, 1.5),
    ("fhir.documentreference.create", "DocumentReference", True, 1.5),
    ("auth.token.issue", None, False, 1),
    ("fhir.bulk.export", "Group", False, 0.05),
)
ROLES = (
    ("nurse", 45),
    ("practitioner", 30),
    ("registrar", 8),
    ("therapist", 6),
    ("billing", 5),
    ("pharmacist", 4),
    ("researcher", 2),
)
SERVICE_NAMES = (
    "hl7-adt",
    "lab-results",
    "radiology-ris",
    "pharmacy-dispense",
    "billing-claims",
    "fhir-gateway",
    "patient-portal",
    "hie-exchange",
    "analytics-etl",
    "transcription",
)
STAFF_AGENTS = (
    "Hyperspace/10.2 (Windows NT 10.0; Win64; x64) Citrix/23.9",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Mobile/15E148 Safari/604.1",
    "Haiku/11.4 (iPhone; iOS 18.1; Scale/3.00)",
    "Rover/9.8 (Android 14; Zebra TC53)",
)
SERVICE_AGENTS = (
    "Mirth Connect/4.5.2",
    "HAPI-FHIR/7.4.0 (FHIR Client; FHIR 4.0.1/R4; apache)",
    "Rhapsody/7.3.1",
    "python-requests/2.32.3",
    "okhttp/4.12.0",
)
STATUSES = Weighted((("success", 96.0), ("failure", 2.5), ("attempt", 1.5)))
LOGIN_STATUSES = Weighted((("success", 91.0), ("failure", 8.0), ("attempt", 1.0)))
FAILURES = (
    "403 consent directive denies access",
    "403 not on the patient's care team",
    "401 token expired",
    "invalid credentials",
    "409 version conflict",
    "422 resource failed validation",
    "503 downstream timeout",
)
PATIENT_CLASSES = Weighted((("PHI", 88.0), ("CONFIDENTIAL", 11.0), ("INTERNAL", 1.0)))
OTHER_CLASSES = Weighted((("INTERNAL", 85.0), ("CONFIDENTIAL", 10.0), ("PUBLIC", 5.0)))
STAFF_PURPOSES = Weighted(
    (
        ("TREAT", 78.0),
        ("HOPERAT", 8.0),
        ("HPAYMT", 5.0),
        ("COC", 3.0),
        ("PATRQT", 2.0),
        ("HRESCH", 1.5),
        ("PUBHLTH", 1.0),
        ("ETREAT", 1.0),
        ("LEGAL", 0.5),
    )
)
SERVICE_PURPOSES = Weighted(
    (
        ("TREAT", 55.0),
        ("HPAYMT", 25.0),
        ("HOPERAT", 15.0),
        ("PUBHLTH", 3.0),
        ("HRESCH", 2.0),
    )
)
FIELDS = (
    "name",
    "birthDate",
    "address",
    "telecom",
    "identifier",
    "gender",
    "maritalStatus",
    "contact",
    "generalPractitioner",
    "communication",
    "valueQuantity",
    "interpretation",
    "referenceRange",
    "dosageInstruction",
)
SIGN_IN_METHODS = ("password", "badge-tap", "saml", "smart-card")
# (shape of details, weight): none, the fields read, a search, some resources, an export
DETAIL_SHAPES = Weighted(
    (("none", 12.0), ("fields", 42.0), ("query", 30.0), ("list", 15.5), ("export", 0.5))
)


def zipf_cumulative(count: int, skew: float) -> list[float]:
    """Cumulative weights 1 / rank^skew for ranks 1..count."""
    return cumulative([1 / rank**skew for rank in range(1, count + 1)])


def patient_id(rank: int) -> str:
    """A 10-digit record number; ranks below 10^9 + 7 map to distinct numbers."""
    return f"MRN{(rank * 7_777_777 + 1_234_567) % 1_000_000_007:010d}"


def staff_id(rank: int) -> str:
    return f"emp{(rank * 7919 + 104_729) % 1_000_000:06d}"


def service_id(rank: int) -> str:
    return f"svc-{SERVICE_NAMES[rank % len(SERVICE_NAMES)]}-{rank // len(SERVICE_NAMES):02d}"


def _mix(value: int) -> int:
    """splitmix64's finalizer: a cheap, well-spread hash of an int."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


class Population:
    """Draws events; one instance per seed, tables built once."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._patients = zipf_cumulative(PATIENTS, PATIENT_SKEW)
        self._staff = zipf_cumulative(STAFF, STAFF_SKEW)
        self._services = zipf_cumulative(SERVICES, SERVICE_SKEW)
        self._staff_actions = cumulative([a[3] for a in STAFF_ACTIONS])
        self._service_actions = cumulative([a[3] for a in SERVICE_ACTIONS])
        self._correlation = ""

    def events(self, count: int) -> list[Event]:
        return [self.event() for _ in range(count)]

    def event(self) -> Event:
        rng = self.rng
        staff = rng.random() >= SERVICE_SHARE
        if staff:
            rank = draw_index(rng, self._staff)
            action = STAFF_ACTIONS[draw_index(rng, self._staff_actions)]
        else:
            rank = draw_index(rng, self._services)
            action = SERVICE_ACTIONS[draw_index(rng, self._service_actions)]
        name, target_type, about_patient, _ = action
        event: Event = {
            "action": name,
            "status": (LOGIN_STATUSES if name == "auth.login" else STATUSES).draw(rng),
            "principal_id": staff_id(rank) if staff else service_id(rank),
            "principal_type": _role(rank) if staff else "service",
        }
        patient = self._subject(event, staff) if about_patient else None
        if patient is None:
            event["data_classification"] = OTHER_CLASSES.draw(rng)
            if rng.random() < 0.3:
                event["purpose_of_use"] = "HOPERAT"
        if target_type is not None:
            event["target_resource_type"] = target_type
            own = f"{target_type}/{rng.getrandbits(48):012x}"
            event["target_resource_id"] = f"Patient/{patient}" if target_type == "Patient" else own
        if event["status"] != "success":
            event["outcome_description"] = rng.choice(FAILURES)
        event["correlation_id"] = self._correlation_id()
        event["session_context"] = self._session(staff, rank)
        details = self._details(target_type, patient)
        if details is not None:
            event["details"] = details
        return event

    def _subject(self, event: Event, staff: bool) -> str:
        """The patient of an event about one, with its classification and purpose of use (and
        now and then break-glass access by staff)."""
        rng = self.rng
        patient = patient_id(draw_index(rng, self._patients))
        event["patient_id"] = patient
        event["data_classification"] = PATIENT_CLASSES.draw(rng)
        event["purpose_of_use"] = (STAFF_PURPOSES if staff else SERVICE_PURPOSES).draw(rng)
        if staff and rng.random() < BREAK_GLASS_SHARE:
            event |= {"break_glass": True, "purpose_of_use": "ETREAT", "priority": "high"}
            event["outcome_description"] = "emergency access: patient unresponsive in ED"
        return patient

    def _correlation_id(self) -> str:
        if not self._correlation or self.rng.random() >= SAME_REQUEST_SHARE:
            self._correlation = f"{self.rng.getrandbits(128):032x}"
        return self._correlation

    def _session(self, staff: bool, rank: int) -> dict[str, str]:
        if not staff:
            code = _mix(rank + 1_000_003)
            return {
                "session_id": f"tok-{code:016x}",
                "ip_address": f"10.0.{rank % 50}.{10 + rank % 4}",
                "user_agent": SERVICE_AGENTS[rank % len(SERVICE_AGENTS)],
            }
        shift = self.rng.randrange(SESSIONS_PER_STAFF)
        code = _mix(rank * SESSIONS_PER_STAFF + shift)
        if code % 1000 < IPV6_SHARE * 1000:  # every group non-zero: already the normal form
            groups = [(code >> shift_by) % 0xFFFF + 1 for shift_by in (0, 16, 32, 48)]
            address = "fd12:3456:789a:1:" + ":".join(f"{g:x}" for g in groups)
        else:
            address = f"10.{16 + code % 48}.{(code >> 8) % 256}.{(code >> 16) % 254 + 1}"
        return {
            "session_id": f"{code:016x}",
            "ip_address": address,
            "user_agent": STAFF_AGENTS[(code >> 24) % len(STAFF_AGENTS)],
        }

    def _details(self, target_type: str | None, patient: str | None) -> dict[str, Any] | None:
        rng = self.rng
        shape = DETAIL_SHAPES.draw(rng)
        if shape == "none":
            return None
        if target_type is None:  # sign-ins and tokens
            return {"method": rng.choice(SIGN_IN_METHODS), "mfa": rng.random() < 0.7}
        if shape == "fields":
            return {"fields": rng.sample(FIELDS, rng.randint(1, 6))}
        if shape == "query":
            subject = f"patient={patient}&" if patient else ""
            count = rng.choice((10, 20, 50, 100))
            since = f"ge2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            query = f"{target_type}?{subject}_count={count}&_lastUpdated={since}"
            return {"query": query, "results": rng.randint(0, count)}
        many = rng.randint(3, 30) if shape == "list" else rng.randint(150, 500)
        resources = [f"{target_type}/{rng.getrandbits(48):012x}" for _ in range(many)]
        found: dict[str, Any] = {"resources": resources}
        if shape == "export":
            found |= {"format": "application/fhir+ndjson", "requested_by": "records-release"}
        return found


def _role(rank: int) -> str:
    """The role of the staff member of this rank: fixed per person."""
    point = _mix(rank) % 1000 / 10
    for role, share in ROLES:
        if point < share:
            return role
        point -= share
    return ROLES[0][0]
