"""Golden vectors for the canonical form, event hash and signature (checked with sha256sum and
openssl independently), so another implementation can test itself against them."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from app.core.config import SigningKey
from app.core.timefmt import format_timestamp
from app.ledger.chain import GENESIS_HEAD, entry_head, ledger_head, ledger_head_v3
from app.ledger.hashing import (
    CANONICAL_FIELDS,
    UnknownSigningKeyError,
    canonical_bytes,
    event_hash,
    sign_hash,
    stored_row_hash,
    verify_signature,
)
from app.ledger.merkle import audit_path, leaf_hash, merkle_root, node_hash
from app.ledger.tlog import root_from_inclusion_proof

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


# The same event as sent with an API key: its id is part of the canonical form (sorted in after
# "action"). A record without a key id (stored before keys were recorded) keeps the form above.
GOLDEN_KEY_ID = "3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
GOLDEN_KEYED_CANONICAL = GOLDEN_CANONICAL.replace(
    '"action":"fhir.patient.read",', f'"action":"fhir.patient.read","api_key_id":"{GOLDEN_KEY_ID}",'
)
GOLDEN_KEYED_HASH = "7137c0c5063eb587d5055c1c4bbca5cd1af99955e12fa499655c76ef8ce87b29"
GOLDEN_KEYED_SIGNATURE = "c8c3056d48ba851ce468f6bc935e0df90dfacd5c48d92f3c30172d474997b77a"


def test_canonical_form_with_the_api_key_matches_golden_bytes() -> None:
    keyed = dict(GOLDEN_RECORD, api_key_id=GOLDEN_KEY_ID)
    assert canonical_bytes(keyed) == GOLDEN_KEYED_CANONICAL.encode()
    assert event_hash(keyed).hex() == GOLDEN_KEYED_HASH
    assert sign_hash(event_hash(keyed), GOLDEN_KEY).hex() == GOLDEN_KEYED_SIGNATURE
    # No key id is the form without the field, however the record spells it.
    assert canonical_bytes(dict(GOLDEN_RECORD, api_key_id=None)) == GOLDEN_CANONICAL.encode()


def test_canonical_form_matches_golden_bytes() -> None:
    assert canonical_bytes(GOLDEN_RECORD) == GOLDEN_CANONICAL.encode()


def test_hash_and_signature_match_golden_vectors() -> None:
    digest = event_hash(GOLDEN_RECORD)
    assert digest.hex() == GOLDEN_HASH
    assert sign_hash(digest, GOLDEN_KEY).hex() == GOLDEN_SIGNATURE
    assert verify_signature(digest, bytes.fromhex(GOLDEN_SIGNATURE), "k1", {"k1": GOLDEN_KEY})


def golden_row(**changes: Any) -> dict[str, Any]:
    """The golden event as asyncpg reads it back: a UUID, aware datetimes, details as the JSON
    text that was stored (keys in another order, with spaces), a key id column."""
    return {
        **GOLDEN_RECORD,
        "event_id": uuid.UUID(GOLDEN_RECORD["event_id"]),
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "received_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "details": '{"z": [1, 2.5, "\\u00e9"], "reason": "treatment", "a": null}',
        "api_key_id": None,
        "hash": b"",
        "leaf_index": 0,
        **changes,
    }


def test_a_stored_row_hashes_to_the_golden_vectors() -> None:
    assert stored_row_hash(golden_row()).hex() == GOLDEN_HASH
    keyed = golden_row(api_key_id=uuid.UUID(GOLDEN_KEY_ID))
    assert stored_row_hash(keyed).hex() == GOLDEN_KEYED_HASH
    # Times read in another zone, details already decoded: the same hash.
    plus_two = timezone(timedelta(hours=2))
    elsewhere = golden_row(
        timestamp=datetime(2026, 1, 2, 5, 4, 5, tzinfo=plus_two),
        received_at=datetime(2026, 1, 2, 5, 4, 5, 678901, tzinfo=plus_two),
        details=GOLDEN_RECORD["details"],
    )
    assert stored_row_hash(elsewhere).hex() == GOLDEN_HASH
    assert stored_row_hash(golden_row(status="failure")).hex() != GOLDEN_HASH
    with pytest.raises(ValueError):
        stored_row_hash(golden_row(timestamp=datetime(2026, 1, 2, 3, 4, 5)))


def test_every_field_changes_the_hash() -> None:
    keyed = dict(GOLDEN_RECORD, api_key_id=GOLDEN_KEY_ID)
    assert set(keyed) == set(CANONICAL_FIELDS)
    for field in CANONICAL_FIELDS:
        changed = dict(keyed)
        changed[field] = "tampered" if changed[field] != "tampered" else "other"
        assert event_hash(changed).hex() != GOLDEN_KEYED_HASH, field
    assert event_hash(GOLDEN_RECORD).hex() != GOLDEN_KEYED_HASH  # the key id dropped


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


# Merkle and ledger vectors, cross-checked with sha256sum and xxd in a shell (see README).
EVENT_HASHES = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
GOLDEN_LEAF_0 = "d9de27625445003d8a9739a851e3ff8d41c0683630b4d63a88327a6aaa37c409"
GOLDEN_NODE_01 = "604d540f09268b91672ab011394d5266ccd7d4484d0d109411a55848126a1b2c"
GOLDEN_ROOT_3 = "d1f13800048f5909d4043fc0c152f6643280cba608b672715e56ce159a20629f"
GOLDEN_HEAD_1 = "51f1cc32cae2d018c03d7b9833cf1dc9056465f53819391e308ce4dff21919f5"
# The same entry with head version 3: tree size 3, its tree root (the batch's root, the log holding
# only it), sealed at 2026-01-02T03:04:06.5Z (checked with xxd and sha256sum independently).
GOLDEN_HEAD_V3_1 = "ef4958d43c4c28cd7a88c4866d500536b376bbb4668963a85e8023c14f2eaf39"


def test_merkle_and_head_golden_vectors() -> None:
    leaves = [leaf_hash(h) for h in EVENT_HASHES]
    assert leaves[0].hex() == GOLDEN_LEAF_0
    assert node_hash(leaves[0], leaves[1]).hex() == GOLDEN_NODE_01
    assert merkle_root(EVENT_HASHES).hex() == GOLDEN_ROOT_3
    assert [p.hex() for p in audit_path(EVENT_HASHES, 2)] == [GOLDEN_NODE_01]
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    head = ledger_head(GENESIS_HEAD, 1, merkle_root(EVENT_HASHES), 3, moment, moment)
    assert head.hex() == GOLDEN_HEAD_1


def test_v3_head_golden_vector_commits_to_sealed_at() -> None:
    root = merkle_root(EVENT_HASHES)
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    sealed_at = datetime(2026, 1, 2, 3, 4, 6, 500_000, tzinfo=UTC)
    head = ledger_head_v3(GENESIS_HEAD, 1, root, 3, moment, moment, 3, root, sealed_at)
    assert head.hex() == GOLDEN_HEAD_V3_1
    entry = {
        "head_version": 3,
        "prev_head": GENESIS_HEAD,
        "seq": 1,
        "merkle_root": root,
        "event_count": 3,
        "first_timestamp": moment,
        "last_timestamp": moment,
        "tree_size": 3,
        "tree_root": root,
        "sealed_at": sealed_at,
    }
    assert entry_head(entry) == head
    assert entry_head({**entry, "sealed_at": sealed_at - timedelta(microseconds=1)}) != head


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_every_proof_recomputes_the_root_and_no_other_leaf(size: int) -> None:
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size)]
    root = merkle_root(hashes)
    for index in range(size):
        path = audit_path(hashes, index)
        assert root_from_inclusion_proof(index, size, leaf_hash(hashes[index]), path) == root
        other = hashlib.sha256(b"other").digest()
        assert root_from_inclusion_proof(index, size, leaf_hash(other), path) != root
    with pytest.raises(ValueError):
        root_from_inclusion_proof(
            0, size, leaf_hash(hashes[0]), [*audit_path(hashes, 0), bytes(32)]
        )
