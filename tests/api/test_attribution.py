"""The auditors' records cannot be forged: the `audit.` action namespace belongs to the service
(a client's event there is refused), and every stored event records the id of the API key that
sent it, in its canonical form and hash, shown in every read and export."""

from __future__ import annotations

import csv
import io

import orjson
import pytest

from app.apikeys.keys import create_api_key
from app.ledger.hashing import event_hash, record_from_row
from app.ledger.verify import verify_range
from tests.conftest import SealedFactory, Service, event, stored_rows, wait_stored


@pytest.mark.parametrize("action", ["audit.query", "AUDIT.read", "audit", "Audit.export.x"])
async def test_clients_cannot_send_audit_actions(service: Service, org: str, action: str) -> None:
    headers = await service.key(org)
    single = await service.client.post("/events", json=event(action=action), headers=headers)
    assert single.status_code == 422, single.text
    assert single.json()["error"]["details"][0]["type"] == "reserved_action"
    bulk = await service.client.post(
        "/events/bulk", json=[event(), event(action=action)], headers=headers
    )
    assert bulk.status_code == 422
    assert [(d["index"], d["type"]) for d in bulk.json()["error"]["details"]] == [
        (1, "reserved_action")
    ]
    fine = await service.client.post("/events", json=event(action="auditing.run"), headers=headers)
    assert fine.status_code == 202


async def test_every_event_records_the_key_that_sent_it(
    service: Service, org: str, database_url: str
) -> None:
    engine = service.app.state.resources.engine
    row_mac = service.app.state.resources.macs.api_keys
    id_a, key_a = await create_api_key(engine, org, ["ingest", "read"], "a", row_mac)
    id_b, key_b = await create_api_key(engine, org, ["ingest"], "b", row_mac)
    sent = {}
    for key_id, key in ((id_a, key_a), (id_b, key_b)):
        resp = await service.client.post(
            "/events", json=event(principal_id=f"by-{key_id}"), headers=_bearer(key)
        )
        assert resp.status_code == 202
        sent[resp.json()["event_id"]] = key_id
    await wait_stored(database_url, org, 2)
    rows = {str(r["event_id"]): r for r in await stored_rows(database_url, org)}
    for event_id, key_id in sent.items():
        row = rows[event_id]
        assert str(row["api_key_id"]) == key_id
        record = record_from_row(row)
        assert record["api_key_id"] == key_id and event_hash(record) == row["hash"]
        forged = dict(record, api_key_id=id_b if key_id == id_a else id_a)
        assert event_hash(forged) != row["hash"]

    reader = _bearer(key_a)
    one = next(iter(sent))
    got = await service.client.get(f"/events/{one}", headers=reader)
    assert got.json()["api_key_id"] == sent[one]
    ndjson = await service.client.get("/events/export", params={"format": "ndjson"}, headers=reader)
    exported = [orjson.loads(line) for line in ndjson.text.splitlines()]
    assert {e["event_id"]: e["api_key_id"] for e in exported if e["event_id"] in sent} == sent
    table = await service.client.get("/events/export", params={"format": "csv"}, headers=reader)
    csv_rows = list(csv.DictReader(io.StringIO(table.text)))
    assert {r["event_id"]: r["api_key_id"] for r in csv_rows if r["event_id"] in sent} == sent
    fhir = await service.client.get("/events/export", params={"format": "fhir"}, headers=reader)
    assert all(id_ in fhir.text for id_ in (id_a, id_b))

    # The reads themselves are recorded under the reader's key.
    await wait_stored(database_url, org, 6)
    audits = [r for r in await stored_rows(database_url, org) if r["action"].startswith("audit.")]
    assert audits and {str(r["api_key_id"]) for r in audits} == {id_a}


async def test_a_changed_key_id_is_a_finding(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 2])
    rows = await sealed.rows(2)
    assert all(r["api_key_id"] is not None for r in rows)
    await sealed.conn.execute(
        "UPDATE audit_log SET api_key_id = gen_random_uuid() WHERE event_id = $1",
        rows[0]["event_id"],
    )
    report = await verify_range(sealed.conn, sealed.verifier)
    assert [(f.check, f.event_id) for f in report.findings] == [
        ("event_hash_mismatch", str(rows[0]["event_id"]))
    ]


async def test_events_stored_without_a_key_id_still_verify(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([4], api_key_id=None)
    rows = await sealed.rows(1)
    assert all(r["api_key_id"] is None for r in rows)
    assert (await verify_range(sealed.conn, sealed.verifier)).intact


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
