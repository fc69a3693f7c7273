"""The event page's badge says what verification says of that event: its fields still give the
sealed hash, the hash carries a valid signature of the named key, and the inclusion proof leads
to a signed ledger entry. Rows are changed as a database superuser would (the service's own role
cannot), in a database of the test's own, since a changed row breaks the chain for everyone."""

from __future__ import annotations

import hashlib
import uuid

import orjson

from app.apikeys.keys import create_api_key
from app.ledger.hashing import canonical_bytes, record_from_row
from tests.api.console_client import console_client
from tests.conftest import SealedFactory, key_seal, running
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
            engine, sealed.org, ["read", "verify"], "officer", key_seal(settings)
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
