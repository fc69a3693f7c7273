"""The tamper matrix: each case seals real batches, shows verification passes, tampers as a
database superuser would, and shows verification names exactly that. Each case has its own
database, since tampering breaks the chain for everything after it."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest

from app.config import SigningKey
from app.integrity import canonical_bytes, record_from_row, sign_hash
from app.verify import Report, Verifier, verify_range
from tests.conftest import Sealed, SealedFactory


@pytest.fixture
async def sealed(sealed_factory: SealedFactory) -> Sealed:
    return await sealed_factory([3, 7, 2, 5])


def checks(report: Report) -> set[str]:
    return {f.check for f in report.findings}


async def test_untouched_chain_verifies(sealed: Sealed) -> None:
    report = await sealed.verify()
    assert report.intact, report.findings
    assert (report.entries, report.events) == (4, 17)
    partial = await sealed.verify(from_seq=2, to_seq=3)
    assert partial.intact and (partial.entries, partial.events) == (2, 9)


async def test_updated_field_is_named(sealed: Sealed) -> None:
    target = (await sealed.rows(2))[3]
    await sealed.conn.execute(
        "UPDATE audit_log SET patient_id = 'someone-else' WHERE event_id = $1", target["event_id"]
    )
    report = await sealed.verify()
    assert [(f.check, f.seq, f.event_id) for f in report.findings] == [
        ("event_hash_mismatch", 2, str(target["event_id"]))
    ]


async def test_updated_field_with_rehash_fails_the_signature(sealed: Sealed) -> None:
    target = (await sealed.rows(1))[0]
    changed = dict(target, action="fhir.patient.delete")
    digest = hashlib.sha256(canonical_bytes(record_from_row(changed))).digest()
    await sealed.conn.execute(
        "UPDATE audit_log SET action = 'fhir.patient.delete', hash = $2 WHERE event_id = $1",
        target["event_id"],
        digest,
    )
    found = checks(await sealed.verify())
    assert found == {"event_signature_invalid", "merkle_root_mismatch"}


async def test_deleted_event_is_named(sealed: Sealed) -> None:
    target = (await sealed.rows(3))[1]
    await sealed.conn.execute("DELETE FROM audit_log WHERE event_id = $1", target["event_id"])
    report = await sealed.verify()
    assert [(f.check, f.seq, f.detail) for f in report.findings] == [
        ("event_missing", 3, "leaf 1 of 2")
    ]


async def insert_forged(sealed: Sealed, **changes: object) -> uuid.UUID:
    """A new row made from a stored one, hashed correctly, signed with a guessed key."""
    source = dict((await sealed.rows(1))[0])
    forged_id = uuid.uuid4()
    forged = {**source, "event_id": forged_id, "principal_id": "intruder", **changes}
    digest = hashlib.sha256(canonical_bytes(record_from_row(forged))).digest()
    guessed = SigningKey("test-1", b"guessed-secret-guessed-secret!!")
    forged.update(hash=digest, signature=sign_hash(digest, guessed))
    columns = list(forged)
    placeholders = ", ".join(f"${i + 1}" for i in range(len(columns)))
    await sealed.conn.execute(
        f"INSERT INTO audit_log ({', '.join(columns)}) VALUES ({placeholders})",
        *forged.values(),
    )
    return forged_id


async def test_forged_row_with_guessed_key_is_named(sealed: Sealed) -> None:
    forged = await insert_forged(sealed, leaf_index=3)  # claims a fourth leaf of batch 1
    report = await sealed.verify()
    assert {(f.check, f.event_id) for f in report.findings} == {
        ("event_signature_invalid", str(forged)),
        ("event_unexpected", str(forged)),
    }


async def test_forged_row_outside_any_batch_is_named(sealed: Sealed) -> None:
    forged = await insert_forged(sealed, batch_id=None, leaf_index=None)
    report = await sealed.verify()
    assert ("event_unsealed", str(forged)) in {(f.check, f.event_id) for f in report.findings}
    unknown = await insert_forged(sealed, batch_id=10**9, leaf_index=0)
    again = await sealed.verify()
    assert ("event_unsealed", str(unknown)) in {(f.check, f.event_id) for f in again.findings}


async def test_swapped_leaf_indexes_are_named(sealed: Sealed) -> None:
    first, second = (await sealed.rows(2))[:2]
    await sealed.conn.execute(
        "UPDATE audit_log SET leaf_index = CASE event_id WHEN $1 THEN 1 ELSE 0 END "
        "WHERE event_id IN ($1, $2)",
        first["event_id"],
        second["event_id"],
    )
    report = await sealed.verify()
    assert [(f.check, f.seq) for f in report.findings] == [("merkle_root_mismatch", 2)]


async def test_event_moved_to_another_batch_is_named(sealed: Sealed) -> None:
    target = (await sealed.rows(2))[6]
    other = await sealed.conn.fetchval("SELECT batch_id FROM audit_ledger WHERE seq = 4")
    await sealed.conn.execute(
        "UPDATE audit_log SET batch_id = $2, leaf_index = 5 WHERE event_id = $1",
        target["event_id"],
        other,
    )
    report = await sealed.verify()
    assert {(f.check, f.seq) for f in report.findings} == {
        ("event_missing", 2),
        ("event_unexpected", 4),
    }


async def test_deleted_ledger_entry_is_named(sealed: Sealed) -> None:
    await sealed.conn.execute("DELETE FROM audit_ledger WHERE seq = 3")
    found = checks(await sealed.verify())
    assert {"ledger_entry_missing", "chain_link_broken", "event_unsealed"} == found


async def test_edited_root_is_named(sealed: Sealed) -> None:
    await sealed.conn.execute("UPDATE audit_ledger SET merkle_root = $1 WHERE seq = 2", bytes(32))
    report = await sealed.verify()
    assert {(f.check, f.seq) for f in report.findings} == {
        ("ledger_head_mismatch", 2),
        ("merkle_root_mismatch", 2),
    }


async def test_removed_signing_key_reports_unknown_key(sealed: Sealed) -> None:
    other = SigningKey("rotated", base64.b64decode(base64.b64encode(b"r" * 32)))
    report = await verify_range(sealed.conn, Verifier({"rotated": other}))
    assert checks(report) == {"unknown_signing_key"}
    assert report.events == 17
