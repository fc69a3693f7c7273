"""Inclusion proofs, checkpoints, Ed25519 heads, key rotation, the HTTP side of integrity, and
two writer processes on one chain."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.core.config import SigningKey, parse_signing_keys
from app.events.model import EVENT_LIST
from app.ledger.bundles import export_bundle, verify_bundle
from app.ledger.proofs import event_proof, verify_event
from app.ledger.signing import new_keypair, verify_public_signature
from app.ledger.verify import Verifier, verify_range
from tests.conftest import SealedFactory, SettingsFactory, event, running, wait_stored
from tests.ledger.log_tamper import cut_tiles
from tests.served import environment

# -- an independent checker, as a third party would write it from the README ------------------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def proof_root(event_hash: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """RFC 9162 2.1.3.2, written out again here on purpose."""
    fn, sn, r = index, size - 1, _h(b"\x00" + event_hash)
    for p in path:
        assert sn > 0
        if fn % 2 == 1 or fn == sn:
            r = _h(b"\x01" + p + r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn // 2, sn // 2
        else:
            r = _h(b"\x01" + r + p)
        fn, sn = fn // 2, sn // 2
    assert sn == 0
    return r


def head_of(entry: dict[str, Any]) -> bytes:
    from datetime import datetime

    def micros(text: str) -> int:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return int(moment.timestamp()) * 1_000_000 + moment.microsecond

    fields = (
        bytes.fromhex(entry["prev_head"])
        + entry["seq"].to_bytes(8, "big")
        + bytes.fromhex(entry["merkle_root"])
        + entry["event_count"].to_bytes(8, "big")
        + micros(entry["first_timestamp"]).to_bytes(8, "big", signed=True)
        + micros(entry["last_timestamp"]).to_bytes(8, "big", signed=True)
    )
    if entry.get("head_version", 1) == 1:
        return _h(b"audit-ledger-head-v1" + fields)
    log = entry["tree_size"].to_bytes(8, "big") + bytes.fromhex(entry["tree_root"])
    if entry["head_version"] == 2:
        return _h(b"audit-ledger-head-v2" + fields + log)
    sealed_at = micros(entry["sealed_at"]).to_bytes(8, "big", signed=True)
    return _h(b"audit-ledger-head-v3" + fields + log + sealed_at)


def check_proof(proof: dict[str, Any], hmac_key: bytes) -> bool:
    entry = proof["ledger_entry"]
    if proof["tree_size"] != entry["event_count"]:
        return False
    path = [bytes.fromhex(p) for p in proof["audit_path"]]
    root = proof_root(
        bytes.fromhex(proof["event_hash"]), proof["leaf_index"], proof["tree_size"], path
    )
    head = head_of(entry)
    signed: bool = hmac.new(hmac_key, head, hashlib.sha256).hexdigest() == entry["signature"]
    return bool(root.hex() == entry["merkle_root"] and head.hex() == entry["head"]) and signed


# ---------------------------------------------------------------------------------------------


async def test_proofs_round_trip_at_every_position(sealed_factory: SealedFactory) -> None:
    sizes = [1, 2, 3, 7, 500]
    sealed = await sealed_factory(sizes)
    key = sealed.res.settings.ledger_key_ring[0].secret
    for seq, size in enumerate(sizes, start=1):
        rows = await sealed.rows(seq)
        assert len(rows) == size
        for row in rows:
            proof = await event_proof(sealed.conn, sealed.org, row["event_id"])
            assert proof is not None and proof["batch_seq"] == seq
            assert proof["tree_size"] == size and proof["leaf_index"] == row["leaf_index"]
            assert check_proof(proof, key), (seq, row["leaf_index"])
            forged = dict(proof, event_hash=hashlib.sha256(b"x").hexdigest())
            assert not check_proof(forged, key)
            if size > 1:  # the claimed position is bound too
                moved = dict(proof, tree_size=size - 1, leaf_index=min(row["leaf_index"], size - 2))
                assert not check_proof(moved, key)
    assert await event_proof(sealed.conn, "another-org", rows[0]["event_id"]) is None


async def test_public_key_alone_verifies_heads(sealed_factory: SealedFactory) -> None:
    private, public = new_keypair()
    sealed = await sealed_factory([4, 2], ledger_private_key=private)
    entries = await sealed.conn.fetch("SELECT head, public_signature FROM audit_ledger")
    assert all(verify_public_signature(public, bytes(e[0]), bytes(e[1])) for e in entries)
    ledger = sealed.verifier.ledger_keys
    assert (
        await verify_range(sealed.conn, Verifier(sealed.verifier.keys, public, ledger_keys=ledger))
    ).intact
    _, stranger = new_keypair()
    report = await verify_range(
        sealed.conn, Verifier(sealed.verifier.keys, stranger, ledger_keys=ledger)
    )
    assert {f.check for f in report.findings} == {"ledger_public_signature_invalid"}


async def test_new_active_keys_keep_old_batches_verifiable(sealed_factory: SealedFactory) -> None:
    from tests.conftest import seal

    sealed = await sealed_factory([3])
    settings = sealed.res.settings
    rotated = settings.model_copy(
        update={
            "signing_keys": _ring(("test-2", b"n"), settings.signing_key_ring[0]),
            "ledger_keys": _ring(("ledger-2", b"m"), settings.ledger_key_ring[0]),
        }
    )
    for ring in ("signing_key_ring", "ledger_key_ring"):
        rotated.__dict__.pop(ring, None)
    sealed.res.settings = rotated
    await seal(sealed.res, sealed.org, [2])
    ledger_ids = [
        r[0] for r in await sealed.conn.fetch("SELECT key_id FROM audit_ledger ORDER BY seq")
    ]
    event_ids = [
        r[0] for r in await sealed.conn.fetch("SELECT key_id FROM audit_log ORDER BY batch_id")
    ]
    assert ledger_ids == ["ledger-1", "ledger-2"]
    assert event_ids == ["test-1"] * 3 + ["test-2"] * 2
    verifier = Verifier(rotated.signing_keys_by_id, ledger_keys=rotated.ledger_keys_by_id)
    assert (await verify_range(sealed.conn, verifier)).intact


async def test_a_retired_key_signing_after_its_retirement_is_a_finding(
    sealed_factory: SealedFactory,
) -> None:
    # Judged by the time its entry was sealed (committed by a v3 head), not by the time an event
    # says it was received, which whoever writes the row chooses.
    sealed = await sealed_factory([3, 2])
    settings = sealed.res.settings
    event_key, ledger_key = settings.signing_key_ring[0], settings.ledger_key_ring[0]
    sealed_at = await sealed.conn.fetchval("SELECT min(sealed_at) FROM audit_ledger")
    received = datetime(2026, 11, 20, 10, tzinfo=UTC)  # the sealed events' receipt time

    def verifier(event_retired: datetime, ledger_retired: datetime) -> Verifier:
        return Verifier(
            {event_key.key_id: replace(event_key, retired_at=event_retired)},
            ledger_keys={ledger_key.key_id: replace(ledger_key, retired_at=ledger_retired)},
        )

    later = sealed_at + timedelta(days=1)
    assert (await verify_range(sealed.conn, verifier(later, later))).intact
    # The event key retired after the events were received, before they were sealed.
    between = verifier(received + timedelta(hours=1), later)
    report = await verify_range(sealed.conn, between)
    found = [(f.check, f.seq, f.event_id is not None) for f in report.findings]
    assert found == [("retired_key_used", 1, True)] * 3 + [("retired_key_used", 2, True)] * 2
    event_id = (await sealed.rows(2))[0]["event_id"]
    verdict = await verify_event(sealed.conn, between, sealed.org, event_id)
    assert verdict is not None and verdict.problems == [
        f"signed with a retired key ({report.findings[-1].detail})"
    ]
    lines = [line async for line in export_bundle(sealed.conn, received, later, sealed.org)]
    bundled = verify_bundle(lines, between)
    assert [(f.check, f.seq, f.event_id is not None) for f in bundled.findings] == found
    report = await verify_range(
        sealed.conn, verifier(received - timedelta(hours=1), sealed_at - timedelta(hours=1))
    )
    found = [(f.check, f.seq, f.event_id is not None) for f in report.findings]
    assert found.count(("retired_key_used", 1, True)) == 3  # events signed after retirement
    assert found.count(("retired_key_used", 2, True)) == 2
    assert ("retired_key_used", 1, False) in found and ("retired_key_used", 2, False) in found
    assert len(found) == 7
    with pytest.raises(ValueError, match="cannot be retired"):
        parse_signing_keys(f"k:{base64.b64encode(b'k' * 32).decode()}@2026-01-01T00:00:00Z")


def _ring(new: tuple[str, bytes], old: SigningKey) -> str:
    key_id, byte = new
    return f"{key_id}:{base64.b64encode(byte * 32).decode()},{old.key_id}:" + (
        base64.b64encode(old.secret).decode()
    )


def _cli(settings_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env, "AUDIT_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_cli_verify_and_checkpoint_catch_a_cut_tail(
    sealed_factory: SealedFactory, tmp_path: Path
) -> None:
    sealed = await sealed_factory([3, 4, 5])
    settings = sealed.res.settings
    env = {
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_SIGNING_KEYS": settings.signing_keys,
        "AUDIT_LEDGER_KEYS": settings.ledger_keys,
    }
    checkpoint = tmp_path / "checkpoint.json"
    exported = _cli(env, "checkpoint", "export", "--out", str(checkpoint))
    assert exported.returncode == 0, exported.stderr
    assert orjson.loads(checkpoint.read_bytes())["seq"] == 3
    intact = _cli(env, "verify", "--checkpoint", str(checkpoint))
    assert intact.returncode == 3, intact.stdout + intact.stderr  # intact, not anchored
    assert orjson.loads(intact.stdout.splitlines()[-1])["intact"] is True

    # Drop the newest batch, its events and its ledger entry: the log's tiles still hold its
    # leaves, so verification names them; trimmed too, the chain itself verifies again.
    await sealed.conn.execute(
        "DELETE FROM audit_log WHERE batch_id = (SELECT batch_id FROM audit_ledger WHERE seq = 3)"
    )
    await sealed.conn.execute("DELETE FROM audit_ledger WHERE seq = 3")
    untrimmed = _cli(env, "verify")
    assert untrimmed.returncode == 1 and '"log_tile_mismatch"' in untrimmed.stdout
    await cut_tiles(sealed.conn, 0, 7)
    assert _cli(env, "verify").returncode == 3  # by itself whole again; not anchored
    cut = _cli(env, "verify", "--checkpoint", str(checkpoint))
    assert cut.returncode == 1
    findings = [orjson.loads(line) for line in cut.stdout.splitlines()[:-1]]
    assert [(f["check"], f["seq"]) for f in findings] == [("checkpoint_not_extended", 3)]
    # Without the checkpoint a cut tail is a shorter history: a range past it is refused, naming
    # the head, not reported as a tamper finding (nor as intact).
    ranged = _cli(env, "verify", "--from-seq", "1", "--to-seq", "3")
    assert ranged.returncode == 2 and "head is seq 2" in ranged.stderr, ranged.stderr


async def test_verify_and_proof_over_http(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    async with running(settings_factory()) as svc:
        headers = await svc.key(org)
        resp = await svc.client.post("/events/bulk", json=[event()] * 25, headers=headers)
        await wait_stored(database_url, org, 25)
        event_id = resp.json()["event_ids"][7]
        proof = await svc.client.get(f"/events/{event_id}/proof", headers=headers)
        assert proof.status_code == 200
        # The checker above, a third party's (True: it holds), and the service's own verdict.
        assert check_proof(proof.json(), svc.settings.ledger_key_ring[0].secret) is True
        assert proof.json()["verification"] == {"verified": True, "problems": []}
        other = await svc.key(f"{org}-other")
        assert (await svc.client.get(f"/events/{event_id}/proof", headers=other)).status_code == 404
        seq = proof.json()["batch_seq"]
        verified = await svc.client.get(
            "/integrity/verify", params={"from_seq": seq, "to_seq": seq}, headers=headers
        )
        assert verified.status_code == 200
        assert verified.headers["content-type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in verified.text.splitlines()]
        assert "progress" in lines[0]
        assert lines[-1]["summary"]["intact"] is True and lines[-1]["summary"]["events"] >= 25
        reader = await svc.key(org, ("read",))
        assert (await svc.client.get("/integrity/verify", headers=reader)).status_code == 403
        bad = await svc.client.get(
            "/integrity/verify", params={"start": "2026-01-01T00:00:00Z"}, headers=headers
        )
        assert bad.status_code == 422


async def test_two_writer_processes_build_one_unbroken_chain(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([1])
    settings = sealed.res.settings
    env = {**os.environ, **environment(settings, batch_size=50, writers=2, read_block_ms=100)}
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "worker", env=env)
        for _ in range(2)
    ]
    try:
        for n in range(40):
            events = EVENT_LIST.validate_python(
                [event(principal_id=f"c{n}-{i}") for i in range(25)]
            )
            await sealed.res.stream.enqueue(
                [e.to_record(sealed.org, "2026-11-20T10:00:00Z") for e in events], 25
            )
        for _ in range(300):
            if (await sealed.res.stream.stats())["queued_events"] == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # let the slower process finish starting before SIGTERM
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
    assert all(proc.returncode == 0 for proc in procs)
    count = await sealed.conn.fetchval("SELECT count(*) FROM audit_log")
    assert count == 1 + 40 * 25
    seqs = [r[0] for r in await sealed.conn.fetch("SELECT seq FROM audit_ledger ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 2
    report = await verify_range(sealed.conn, sealed.verifier)
    assert report.intact, report.findings[:5]
    assert report.events == count


async def test_offline_bundle_verifies_without_a_database(
    sealed_factory: SealedFactory, tmp_path: Path
) -> None:
    private, public = new_keypair()
    sealed = await sealed_factory([4, 6, 3], ledger_private_key=private)
    settings = sealed.res.settings
    env = {
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_SIGNING_KEYS": settings.signing_keys,
        "AUDIT_LEDGER_KEYS": settings.ledger_keys,
    }
    out = tmp_path / "bundle.ndjson"
    made = _cli(
        env,
        "export-bundle",
        "--start",
        "2000-01-01T00:00:00Z",
        "--end",
        "2100-01-01T00:00:00Z",
        "--org",
        sealed.org,
        str(out),
    )
    assert made.returncode == 0, made.stderr
    assert "not anchored" in made.stderr  # no witness cosigned anything
    kinds = [next(iter(orjson.loads(line))) for line in out.read_bytes().splitlines()]
    assert kinds.count("ledger") == 3 and kinds.count("event") == 13
    assert "checkpoint" not in kinds and "consistency" not in kinds
    offline = {"AUDIT_DATABASE_URL": "", "AUDIT_SIGNING_KEYS": "", "AUDIT_LEDGER_KEYS": ""}
    # Nothing broke, but no cosigned checkpoint anchors it: exit 3, as verify's.
    checked = _cli(offline, "verify-bundle", str(out), "--public-key", public)
    assert checked.returncode == 3, checked.stdout + checked.stderr
    summary = orjson.loads(checked.stdout.splitlines()[-1])
    assert summary["intact"] and summary["events"] == 13
    assert summary["verdict"] == "not anchored" and summary["unanchored_chains"] == [0]
    assert "NOT ANCHORED" in checked.stderr
    assert summary["checked"] == {"hmac": False, "public_key": True}
    assert _cli(env, "verify-bundle", str(out)).returncode == 3  # with the HMAC keys instead
    # A bundle of before the anchoring lines (audit-bundle-v1) reads the same: not anchored.
    old = [
        line.replace(b"audit-bundle-v2", b"audit-bundle-v1")
        for line in out.read_bytes().splitlines()
        if line.startswith((b'{"bundle"', b'{"ledger"', b'{"event"', b'{"leaf"'))
    ]
    v1 = tmp_path / "v1.ndjson"
    v1.write_bytes(b"\n".join(old) + b"\n")
    read = _cli(offline, "verify-bundle", str(v1), "--public-key", public)
    assert read.returncode == 3, read.stdout + read.stderr
    assert orjson.loads(read.stdout.splitlines()[-1])["verdict"] == "not anchored"

    lines = out.read_bytes().splitlines()
    first_event = orjson.loads(next(x for x in lines if x.startswith(b'{"event"')))["event"]
    shadow = {
        "leaf": {
            "batch_seq": first_event["batch_seq"],
            "hash": "00" * 32,
            "leaf_index": first_event["leaf_index"],
        }
    }
    shadowed = tmp_path / "shadowed.ndjson"
    shadowed.write_bytes(out.read_bytes() + orjson.dumps(shadow) + b"\n")
    doubled = _cli(offline, "verify-bundle", str(shadowed), "--public-key", public)
    assert doubled.returncode == 1 and "twice" in doubled.stdout
    for i, line in enumerate(lines):
        if line.startswith(b'{"event"'):
            lines[i] = line.replace(b'"principal_id":"u1-', b'"principal_id":"x1-', 1)
    tampered = tmp_path / "tampered.ndjson"
    tampered.write_bytes(b"\n".join(lines) + b"\n")
    bad = _cli(offline, "verify-bundle", str(tampered), "--public-key", public)
    assert bad.returncode == 1
    assert {orjson.loads(x)["check"] for x in bad.stdout.splitlines()[:-1]} == {
        "event_hash_mismatch"
    }


async def test_verification_while_writers_seal_reports_nothing_false(
    settings_factory: SettingsFactory, org: str, sealed_factory: SealedFactory
) -> None:
    sealed = await sealed_factory([1])
    settings = settings_factory(
        database_url=sealed.res.settings.database_url, writers=2, batch_size=100
    )
    async with running(settings) as svc:
        headers = await svc.key(org)
        stop = asyncio.Event()

        async def ingest() -> None:
            while not stop.is_set():
                await svc.client.post("/events/bulk", json=[event()] * 150, headers=headers)

        task = asyncio.create_task(ingest())
        try:
            for _ in range(6):
                report = await verify_range(sealed.conn, sealed.verifier)
                assert report.intact, report.findings[:3]
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await task
    final = await verify_range(sealed.conn, sealed.verifier)
    assert final.intact and final.entries > 5
