"""The event page's badge says what verification says of that event: its fields still give the
sealed hash, the hash carries a valid signature of the named key, and the inclusion proof leads
to a signed ledger entry. Rows are changed as a database superuser would (the service's own role
cannot), in a database of the test's own, since a changed row breaks the chain for everyone."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import timedelta

import orjson

from app.apikeys.keys import create_api_key
from app.core.timefmt import format_timestamp
from app.ledger.hashing import canonical_bytes, record_from_row
from app.ledger.signing import new_keypair
from tests.conftest import SealedFactory, Service, key_row_mac, running
from tests.console.console_client import console_client
from tests.ledger.test_verify import insert_forged


def verify_findings(body: bytes) -> set[tuple[str, str | None]]:
    lines = [orjson.loads(line) for line in body.splitlines()]
    return {(x["finding"]["check"], x["finding"]["event_id"]) for x in lines if "finding" in x}


async def test_the_badge_and_the_proof_say_what_verify_says(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([3, 4, 2])
    settings = sealed.res.settings
    untouched, changed, rehashed = [(await sealed.rows(seq))[1] for seq in (1, 2, 3)]
    await sealed.conn.execute(
        "UPDATE audit_log SET patient_id = 'someone-else' WHERE event_id = $1",
        changed["event_id"],
    )
    moved = dict(rehashed, action="fhir.patient.delete")
    digest = hashlib.sha256(canonical_bytes(record_from_row(moved))).digest()
    await sealed.conn.execute(
        "UPDATE audit_log SET action = 'fhir.patient.delete', hash = $2 WHERE event_id = $1",
        rehashed["event_id"],
        digest,
    )
    unsealed = await insert_forged(sealed, batch_id=None, leaf_index=None)
    async with running(settings) as svc:
        engine = svc.app.state.resources.engine
        _, key = await create_api_key(
            engine, sealed.org, ["read", "verify"], "officer", key_row_mac(settings)
        )
        bearer = {"Authorization": f"Bearer {key}"}
        verified = await svc.client.get("/integrity/verify", headers=bearer)
        found = verify_findings(verified.content)
        assert ("event_hash_mismatch", str(changed["event_id"])) in found
        assert ("event_signature_invalid", str(rehashed["event_id"])) in found

        async with console_client(svc.app, key) as console:

            async def badge(event_id: uuid.UUID) -> str:
                page = await console.get(f"/console/events/{event_id}")
                assert page.status_code == 200, page.text
                start = page.text.index('<span class="badge')
                return page.text[start : page.text.index("</span>", start)]

            assert 'id="verified"' in await badge(untouched["event_id"])
            shown = await badge(changed["event_id"])
            assert 'id="not-verified"' in shown and "field changed since sealing" in shown
            assert "hash mismatch" in shown
            shown = await badge(rehashed["event_id"])
            assert 'id="not-verified"' in shown and "signature invalid" in shown
            shown = await badge(unsealed)
            assert 'id="not-verified"' in shown and "not in the ledger" in shown

        proofs = {}
        for row in (untouched, changed, rehashed):
            answer = await svc.client.get(f"/events/{row['event_id']}/proof", headers=bearer)
            assert answer.status_code == 200, answer.text
            proofs[row["event_id"]] = answer.json()["verification"]
        assert proofs[untouched["event_id"]]["verified"] is True
        assert proofs[untouched["event_id"]]["problems"] == []
        assert not proofs[changed["event_id"]]["verified"]
        assert any("hash mismatch" in p for p in proofs[changed["event_id"]]["problems"])
        assert any("signature invalid" in p for p in proofs[rehashed["event_id"]]["problems"])


def verify_entry_findings(body: bytes) -> set[tuple[str, int]]:
    """What a verification found of ledger entries (no event named): check and seq."""
    lines = [orjson.loads(line) for line in body.splitlines()]
    findings = [x["finding"] for x in lines if "finding" in x]
    return {(f["check"], f["seq"]) for f in findings if f["event_id"] is None}


async def verdicts(
    svc: Service, key: str, event_ids: list[uuid.UUID]
) -> list[tuple[str, list[str]]]:
    """Each event's badge on the console and the problems its proof's `verification` names."""
    found = []
    async with console_client(svc.app, key) as console:
        for event_id in event_ids:
            page = await console.get(f"/console/events/{event_id}")
            assert page.status_code == 200, page.text
            start = page.text.index('<span class="badge')
            badge = page.text[start : page.text.index("</span>", start)]
            answer = await svc.client.get(
                f"/events/{event_id}/proof", headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == 200, answer.text
            verification = answer.json()["verification"]
            assert verification["verified"] == (not verification["problems"])
            found.append((badge, verification["problems"]))
    return found


async def test_an_entry_without_a_valid_public_signature_is_not_verified(
    sealed_factory: SealedFactory,
) -> None:
    # With the HMAC keys and the ledger's public key both configured, verify checks both
    # signatures of every entry; so does the verdict of each event the entry holds.
    private, public = new_keypair()
    sealed = await sealed_factory([2, 2, 2], ledger_private_key=private, ledger_public_key=public)
    untouched, unsigned, missigned = [(await sealed.rows(seq))[0] for seq in (1, 2, 3)]
    await sealed.conn.execute("UPDATE audit_ledger SET public_signature = NULL WHERE seq = 2")
    await sealed.conn.execute(
        "UPDATE audit_ledger SET public_signature = $1 WHERE seq = 3", bytes(64)
    )
    async with running(sealed.res.settings) as svc:
        engine = svc.app.state.resources.engine
        _, key = await create_api_key(
            engine, sealed.org, ["read", "verify"], "officer", key_row_mac(sealed.res.settings)
        )
        verified = await svc.client.get(
            "/integrity/verify", headers={"Authorization": f"Bearer {key}"}
        )
        assert verify_entry_findings(verified.content) == {
            ("ledger_public_signature_invalid", 2),
            ("ledger_public_signature_invalid", 3),
        }
        shown = await verdicts(svc, key, [r["event_id"] for r in (untouched, unsigned, missigned)])
    (badge, problems), *broken = shown
    assert 'id="verified"' in badge and problems == []
    for badge, problems in broken:
        assert 'id="not-verified"' in badge and "ledger entry public signature invalid" in badge
        assert len(problems) == 1 and "public signature invalid" in problems[0]


async def test_an_entry_signed_with_a_retired_ledger_key_is_not_verified(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([3])
    settings = sealed.res.settings
    old = settings.ledger_key_ring[0]
    sealed_at = await sealed.conn.fetchval("SELECT sealed_at FROM audit_ledger WHERE seq = 1")
    secret = base64.b64encode(old.secret).decode()
    retired_at = format_timestamp(sealed_at - timedelta(hours=1))
    fresh = base64.b64encode(b"m" * 32).decode()
    rotated = settings.model_copy(
        update={"ledger_keys": f"ledger-2:{fresh},{old.key_id}:{secret}@{retired_at}"}
    )
    rotated.__dict__.pop("ledger_key_ring", None)
    async with running(rotated) as svc:
        engine = svc.app.state.resources.engine
        _, key = await create_api_key(
            engine, sealed.org, ["read", "verify"], "officer", key_row_mac(settings)
        )
        verified = await svc.client.get(
            "/integrity/verify", headers={"Authorization": f"Bearer {key}"}
        )
        assert verify_entry_findings(verified.content) == {("retired_key_used", 1)}
        [(badge, problems)] = await verdicts(svc, key, [(await sealed.rows(1))[0]["event_id"]])
    assert 'id="not-verified"' in badge and "ledger entry signed with a retired key" in badge
    assert len(problems) == 1 and f"key {old.key_id!r}" in problems[0]
    assert f"retired at {retired_at}" in problems[0]


async def test_without_verification_keys_the_proof_goes_out_unchecked(
    sealed_factory: SealedFactory,
) -> None:
    # An API process given no keys to verify with still gives an event's proof, for whoever
    # holds the keys to check it; it says it checked nothing, and the badge says so too.
    sealed = await sealed_factory([3])
    settings = sealed.res.settings
    keyless = settings.model_copy(update={"signing_keys": "", "ledger_keys": ""})
    for ring in ("signing_key_ring", "ledger_key_ring"):
        keyless.__dict__.pop(ring, None)
    row = (await sealed.rows(1))[1]
    async with running(keyless) as svc:
        engine = svc.app.state.resources.engine
        _, key = await create_api_key(
            engine, sealed.org, ["read"], "officer", key_row_mac(settings)
        )
        answer = await svc.client.get(
            f"/events/{row['event_id']}/proof", headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200, answer.text
        proof = answer.json()
        assert proof["verification"] is None
        assert proof["verification_unavailable"] == "no usable verification keys configured"
        assert proof["event_hash"] == bytes(row["hash"]).hex() and proof["leaf_index"] == 1
        async with console_client(svc.app, key) as console:
            page = await console.get(f"/console/events/{row['event_id']}")
        assert page.status_code == 200, page.text
        start = page.text.index('<span class="badge')
        badge = page.text[start : page.text.index("</span>", start)]
        assert 'id="not-checked"' in badge
        assert "Not checked: no usable verification keys configured" in badge
