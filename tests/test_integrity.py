"""Golden vectors for the canonical form, event hash and signature (checked with sha256sum and
openssl independently), so another implementation can test itself against them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from app.config import SigningKey
from app.integrity import (
    CANONICAL_FIELDS,
    UnknownSigningKeyError,
    canonical_bytes,
    event_hash,
    format_timestamp,
    sign_hash,
    verify_signature,
)

GOLDEN_RECORD: dict[str, Any] = {
    "action": "fhir.patient.read",
    "break_glass": False,
    "correlation_id": None,
    "data_classification": "PHI",
    "details": {"reason": "treatment", "z": [1, 2.5, "é"], "a": None},
    "event_id": "01936f4e-8a2b-7c3d-9e4f-a1b2c3d4e5f6",
    "ip_address": "10.1.2.3",
    "organization_id": "demo",
    "outcome_description": None,
    "patient_id": "p-123",
    "principal_id": "dr.smith",
    "principal_type": "practitioner",
    "priority": "normal",
    "purpose_of_use": "TREAT",
    "received_at": "2026-01-02T03:04:05.678901Z",
    "session_id": "s-1",
    "status": "success",
    "target_resource_id": "Patient/p-123",
    "target_resource_type": "Patient",
    "timestamp": "2026-01-02T03:04:05.000000Z",
    "user_agent": "curl/8",
}
GOLDEN_CANONICAL = (
    '{"action":"fhir.patient.read","break_glass":false,"correlation_id":null,'
    '"data_classification":"PHI","details":{"a":null,"reason":"treatment","z":[1,2.5,"é"]},'
    '"event_id":"01936f4e-8a2b-7c3d-9e4f-a1b2c3d4e5f6","ip_address":"10.1.2.3",'
    '"organization_id":"demo","outcome_description":null,"patient_id":"p-123",'
    '"principal_id":"dr.smith","principal_type":"practitioner","priority":"normal",'
    '"purpose_of_use":"TREAT","received_at":"2026-01-02T03:04:05.678901Z","session_id":"s-1",'
    '"status":"success","target_resource_id":"Patient/p-123","target_resource_type":"Patient",'
    '"timestamp":"2026-01-02T03:04:05.000000Z","user_agent":"curl/8"}'
)
GOLDEN_HASH = "040d42658b68ff94a2ddf2886b86c01996ba55ab4d6a95dfbce41a6cbaef2e3c"
GOLDEN_KEY = SigningKey("k1", b"k" * 32)
GOLDEN_SIGNATURE = "30fe5ce6759652628bd9f483ba5e028211aed74d9d012657da6b9baa31eabd3b"


def test_canonical_form_matches_golden_bytes() -> None:
    assert canonical_bytes(GOLDEN_RECORD) == GOLDEN_CANONICAL.encode()


def test_hash_and_signature_match_golden_vectors() -> None:
    digest = event_hash(GOLDEN_RECORD)
    assert digest.hex() == GOLDEN_HASH
    assert sign_hash(digest, GOLDEN_KEY).hex() == GOLDEN_SIGNATURE
    assert verify_signature(digest, bytes.fromhex(GOLDEN_SIGNATURE), "k1", {"k1": GOLDEN_KEY})


def test_every_field_changes_the_hash() -> None:
    for field in CANONICAL_FIELDS:
        changed = dict(GOLDEN_RECORD)
        changed[field] = "tampered" if changed[field] != "tampered" else "other"
        assert event_hash(changed).hex() != GOLDEN_HASH, field


def test_nested_details_change_the_hash() -> None:
    changed = dict(GOLDEN_RECORD, details={"reason": "treatment", "z": [1, 2.5, "e"], "a": None})
    assert event_hash(changed).hex() != GOLDEN_HASH


def test_missing_or_extra_fields_are_refused() -> None:
    missing = {k: v for k, v in GOLDEN_RECORD.items() if k != "details"}
    with pytest.raises(ValueError, match="missing=\\['details'\\]"):
        canonical_bytes(missing)
    with pytest.raises(ValueError, match="extra=\\['hash'\\]"):
        canonical_bytes(dict(GOLDEN_RECORD, hash="x"))


def test_signature_with_another_key_fails_and_unknown_key_is_named() -> None:
    digest = event_hash(GOLDEN_RECORD)
    other = SigningKey("k1", b"x" * 32)
    assert not verify_signature(digest, bytes.fromhex(GOLDEN_SIGNATURE), "k1", {"k1": other})
    with pytest.raises(UnknownSigningKeyError):
        verify_signature(digest, bytes.fromhex(GOLDEN_SIGNATURE), "gone", {"k1": GOLDEN_KEY})


def test_timestamps_are_formatted_in_utc_with_microseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 1, 2, 5, 4, 5, tzinfo=plus_two)) == (
        "2026-01-02T03:04:05.000000Z"
    )
    with pytest.raises(ValueError):
        format_timestamp(datetime(2026, 1, 2))
