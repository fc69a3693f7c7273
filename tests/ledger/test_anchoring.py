"""Verification anchored to checkpoints the log's witnesses cosigned: what a database superuser
does to the ledger (cut its tail, wipe it) is named against the witnessed checkpoint, and with
no cosigned checkpoint the verdict says "not anchored", never a plain intact.

Each test has its own database (the attacks change every chain) and its own witness, a real
one on a loopback port; the service's writers make and send the checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from app.cli.migrate import migrate
from app.core.config import Settings
from app.core.metrics import Metrics
from app.ledger.checkpoints import log_keys, origin_of
from app.ledger.merkle import leaf_hash
from app.ledger.notes import open_note, parse_checkpoint
from app.ledger.proofs import check_proof
from app.ledger.signing import new_keypair
from app.ledger.tlog import verify_inclusion
from app.witness.config import load_identity
from app.witness.state import origin_hash
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import (
    SealedFactory,
    Service,
    SettingsFactory,
    event,
    eventually,
    running,
    wait_stored,
    with_database,
)
from tests.console.console_client import console_client
from tests.witness.conftest import RunningWitness, running_witness, unused_url

WITHIN_S = 20.0


@dataclass
class Witnessed:
    svc: Service
    settings: Settings
    witness: RunningWitness
    conn: asyncpg.Connection
    headers: dict[str, str]
    org: str

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            "AUDIT_DATABASE_URL": s.database_url,
            "AUDIT_SIGNING_KEYS": s.signing_keys,
            "AUDIT_LEDGER_KEYS": s.ledger_keys,
            "AUDIT_LEDGER_PUBLIC_KEY": s.ledger_public_key,
            "AUDIT_WITNESSES": s.witnesses,
            "AUDIT_WITNESS_DIR": s.witness_dir,
            "AUDIT_CHECKPOINT_DIR": s.checkpoint_dir,
        }

    async def send(self, count: int) -> None:
        body = [event(principal_id=f"u{i}", patient_id=f"p{i}") for i in range(count)]
        resp = await self.svc.client.post("/events/bulk", json=body, headers=self.headers)
        assert resp.status_code == 202, resp.text

    async def cosigned_size(self, size: int) -> None:
        """Wait until the witness has cosigned the chain 0 log at `size` leaves and the
        service has stored the cosignature."""
        origin = origin_of(self.settings.log_origin, 0)
        stored = "SELECT count(*) FROM audit_checkpoint_cosignatures WHERE tree_size = $1"

        async def cosigned() -> bool:
            state = self.witness_state(origin)
            if state is None or state["size"] < size:
                return False
            assert state["size"] == size
            return bool(await self.conn.fetchval(stored, size))

        await eventually(cosigned, WITHIN_S)

    def witness_state(self, origin: str) -> dict[str, Any] | None:
        path = self.witness.directory / (origin_hash(origin) + ".json")
        return orjson.loads(path.read_bytes()) if path.exists() else None


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "AUDIT_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=full, capture_output=True, text=True, timeout=120
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return dict(orjson.loads(result.stdout.splitlines()[-1]))


def checks(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [orjson.loads(line)["check"] for line in result.stdout.splitlines()[:-1]]


@contextlib.asynccontextmanager
async def witnessed(
    database_url: str,
    settings_factory: SettingsFactory,
    tmp_path: Path,
    *,
    quorum: int = 1,
    running_witnesses: int = 1,
    down: int = 0,
) -> AsyncIterator[Witnessed]:
    """A service over a database of its own whose writers checkpoint every 50 ms and send each
    checkpoint to its witnesses: `running_witnesses` real ones (the first is `w.witness`) and
    `down` that nobody answers for."""
    name = f"audit_anchor_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(database_url, name)
    private, public = new_keypair()
    base = settings_factory(database_url=url, ledger_private_key=private, ledger_public_key=public)
    keys = {origin_of(base.log_origin, 0): log_keys(base.log_origin, 0, public)}
    try:
        async with contextlib.AsyncExitStack() as stack:
            started = [
                await stack.enter_async_context(
                    running_witness(tmp_path / f"witness-{n}", keys, name=f"witness.test/w{n}")
                )
                for n in range(running_witnesses)
            ]
            listed = [f"{w.url}={w.identity.vkey}" for w in started]
            for n in range(down):
                offline = load_identity(tmp_path / f"down-{n}", f"witness.test/down{n}", "")
                listed.append(f"{unused_url()}={offline.vkey}")
            settings = settings_factory(
                database_url=url,
                ledger_private_key=private,
                ledger_public_key=public,
                witnesses=",".join(listed),
                witness_quorum=quorum,
                witness_timeout_s=2,
                witness_dir=str(started[0].directory),
                checkpoint_dir=str(tmp_path / "checkpoints"),
                checkpoint_interval_s=0.05,
            )
            await asyncio.to_thread(migrate, settings)
            conn = await stack.enter_async_context(_connection(url))
            svc = await stack.enter_async_context(running(settings))
            org = f"org-{uuid.uuid4().hex[:8]}"
            headers = await svc.key(org)
            yield Witnessed(svc, settings, started[0], conn, headers, org)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def _connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def superuser(conn: asyncpg.Connection, *statements: str) -> None:
    """Statements run past every trigger, as the database's owner could."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            await conn.execute(statement)


async def test_with_no_cosigned_checkpoint_the_verdict_is_not_anchored(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    async with running(settings_factory()) as svc:  # no ledger key, no witness
        headers = await svc.key(org)
        resp = await svc.client.post("/events/bulk", json=[event()] * 3, headers=headers)
        assert resp.status_code == 202
        await wait_stored(database_url, org, 3)
        answer = await svc.client.get("/integrity/verify", headers=headers)
        final = orjson.loads(answer.content.splitlines()[-1])["summary"]
        assert final["intact"] is True and final["findings"] == 0
        assert final["verdict"] == "not anchored" and final["anchored"] == []


async def test_a_witnessed_log_verifies_anchored(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        await w.send(5)
        await wait_stored(w.settings.database_url, w.org, 5)
        await w.cosigned_size(5)
        result = cli(w.env(), "verify")
        assert result.returncode == 0, result.stdout + result.stderr
        final = summary(result)
        assert final["verdict"] == "intact"
        [anchor] = final["anchored"]
        assert anchor["size"] == 5 and anchor["witnesses"] == [w.witness.identity.name]
        assert "anchored to size 5" in result.stderr
        # The checkpoint itself with its cosignature, and the verdict over HTTP (whose own
        # read record the log then holds: sizes are not shown to one organization).
        cosigned = f"\u2014 {w.witness.identity.name} "

        async def served() -> bool:  # the witness answered; the service then stores its line
            note = await w.svc.client.get("/log/0/checkpoint", headers=w.headers)
            assert note.status_code == 200
            assert note.text.startswith(origin_of(w.settings.log_origin, 0) + "\n5\n")
            return cosigned in note.text

        await eventually(served)
        answer = await w.svc.client.get("/integrity/verify", headers=w.headers)
        final = orjson.loads(answer.content.splitlines()[-1])["summary"]
        assert final["verdict"] == "intact" and "size" not in final["anchored"][0]
        key = w.headers["Authorization"].removeprefix("Bearer ")
        async with console_client(w.svc.app, key) as console:
            page = await console.get("/console/verify?run=1")
        assert '<span class="badge ok" id="verdict">intact, anchored</span>' in page.text
        assert f"cosigned by {w.witness.identity.name}" in page.text
        # Without the witnesses' public keys nothing anchors it: exit 3, never a plain intact.
        unwitnessed = cli({**w.env(), "AUDIT_WITNESSES": ""}, "verify")
        assert unwitnessed.returncode == 3, unwitnessed.stdout + unwitnessed.stderr
        assert summary(unwitnessed)["verdict"] == "not anchored"
        assert "NOT ANCHORED" in unwitnessed.stderr


async def test_a_cut_tail_is_named_against_the_witnessed_checkpoint(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    """Deleting the three newest ledger entries with their events and the log's tiles past
    them leaves a chain that checks whole by itself: only the witnessed checkpoint shows it."""
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        for size in (2, 3, 4, 5):  # one batch each: wait for each to be stored
            await w.send(size)
            await wait_stored(w.settings.database_url, w.org, {2: 2, 3: 5, 4: 9, 5: 14}[size])
        await w.cosigned_size(14)
        newest = await w.conn.fetchval("SELECT max(seq) FROM audit_ledger")
        assert newest == 4
        await w.svc.app.state.resources.writers.stop()  # nothing more is sealed or checkpointed
        await superuser(
            w.conn,
            """DELETE FROM audit_log WHERE batch_id IN
               (SELECT batch_id FROM audit_ledger WHERE seq >= 2)""",
            "DELETE FROM audit_ledger WHERE seq >= 2",
            "DELETE FROM audit_checkpoint_cosignatures",
            "DELETE FROM audit_checkpoints",
            """UPDATE audit_log_tiles SET hashes = substring(hashes FROM 1 FOR 64)
               WHERE level = 0 AND idx = 0""",
        )
        result = cli(w.env(), "verify")
        assert result.returncode == 1, result.stdout + result.stderr
        assert checks(result) == ["log_shorter_than_checkpoint"]
        assert "the log has 2 leaves" in result.stdout and "has 14" in result.stdout


async def test_wiped_tables_are_named_by_the_api_and_the_witness_refuses_the_new_log(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    """DELETE FROM audit_log and audit_ledger (and the tiles and checkpoints): the service seals
    its own record of the next read as a fresh seq 1; the API's verdict is broken, the witness
    refuses the fresh log's checkpoint and the service counts that."""
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        await w.send(6)
        await wait_stored(w.settings.database_url, w.org, 6)
        await w.cosigned_size(6)
        await superuser(
            w.conn,
            "DELETE FROM audit_log",
            "DELETE FROM audit_ledger",
            "DELETE FROM audit_log_tiles",
            "DELETE FROM audit_checkpoint_cosignatures",
            "DELETE FROM audit_checkpoints",
        )
        await w.svc.client.get("/events", headers=w.headers)  # its read record: a new seq 1
        metrics = w.svc.app.state.resources.metrics

        async def refused() -> bool:
            value = metrics.registry.get_sample_value(
                "audit_witness_failures_total", {"witness": w.witness.identity.name}
            )
            return bool(value)

        await eventually(refused, WITHIN_S)  # the witness refused the fresh log
        answer = await w.svc.client.get("/integrity/verify", headers=w.headers)
        lines = [orjson.loads(line) for line in answer.content.splitlines()]
        final = lines[-1]["summary"]
        assert final["intact"] is False and final["verdict"] == "broken"
        found = [x["finding"]["check"] for x in lines if "finding" in x]
        assert found == ["log_shorter_than_checkpoint"] or found == ["checkpoint_root_mismatch"]
        state = w.witness_state(origin_of(w.settings.log_origin, 0))
        assert state is not None and state["size"] == 6  # it kept the log it saw


async def test_an_event_proof_leads_to_the_cosigned_checkpoint(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        await w.send(7)
        await wait_stored(w.settings.database_url, w.org, 7)
        await w.cosigned_size(7)
        rows = await w.conn.fetch("SELECT event_id FROM audit_log ORDER BY leaf_index")
        answer = await w.svc.client.get(f"/events/{rows[3]['event_id']}/proof", headers=w.headers)
        assert answer.status_code == 200, answer.text
        proof = answer.json()
        assert proof["verification"]["verified"] is True
        given = proof["log"]["checkpoint"]
        assert given["tree_size"] == 7
        # Checked by an outsider with the log's key and the witness's key alone.
        keys = log_keys(w.settings.log_origin, 0, w.settings.ledger_public_key)
        opened = open_note(given["note"], [*keys, w.witness.identity.verifier_key])
        assert {s.name for s in opened.verified} == {keys[0].name, w.witness.identity.name}
        checkpoint = parse_checkpoint(opened.text)
        verify_inclusion(
            3,
            checkpoint.size,
            leaf_hash(bytes.fromhex(proof["event_hash"])),
            [bytes.fromhex(h) for h in given["inclusion_proof"]],
            checkpoint.root_hash,
        )
        # A proof whose path no longer leads to the signed root is named.
        broken = {**proof, "log": {**proof["log"], "checkpoint": {**given, "inclusion_proof": []}}}
        assert check_proof(broken) == "the inclusion proof does not lead to the checkpoint's root"


async def test_a_quorum_of_two_of_three_witnesses_with_one_down_anchors(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    async with witnessed(
        database_url, settings_factory, tmp_path, quorum=2, running_witnesses=2, down=1
    ) as w:
        await w.send(4)
        await wait_stored(w.settings.database_url, w.org, 4)
        await w.cosigned_size(4)
        metrics = w.svc.app.state.resources.metrics

        def sample(name: str, **labels: str) -> float:
            return metrics.registry.get_sample_value(name, labels) or 0.0

        async def two_cosigned() -> bool:
            return sample("audit_checkpoint_cosignatures", chain="0") >= 2

        await eventually(two_cosigned, WITHIN_S)
        assert sample("audit_witness_failures_total", witness="witness.test/down0") >= 1
        assert sample("audit_witness_quorum_missed_total", chain="0") == 0
        result = cli(w.env(), "verify")
        assert result.returncode == 0, result.stdout + result.stderr
        [anchor] = summary(result)["anchored"]
        assert anchor["witnesses"] == ["witness.test/w0", "witness.test/w1"]
        # With the quorum raised to three, the same checkpoints anchor nothing.
        three = cli({**w.env(), "AUDIT_WITNESS_QUORUM": "3"}, "verify")
        assert three.returncode == 3, three.stdout + three.stderr
        assert "cosigned by 2 of the 3 witnesses" in three.stderr


async def test_rows_inserted_in_the_checkpoint_tables_neither_stop_nor_steer_the_checkpoints(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    """A huge checkpoint row with a forged cosignature row, INSERTed as any writer role could:
    the checkpointer still signs each new size and the witness cosigns it, so a tail cut after
    that is named against the newest witnessed checkpoint."""
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        await w.send(5)
        await wait_stored(w.settings.database_url, w.org, 5)
        await w.cosigned_size(5)
        vkey = w.witness.identity.vkey
        await w.conn.execute(
            """INSERT INTO audit_checkpoints (chain, tree_size, root, seq, sealed_at, note)
               SELECT 0, 1000000000000, decode(repeat('00', 32), 'hex'), 1, now(), note
               FROM audit_checkpoints WHERE tree_size = 5"""
        )
        await w.conn.execute(
            """INSERT INTO audit_checkpoint_cosignatures
               (chain, tree_size, witness, line, cosigned_at)
               VALUES (0, 1000000000000, $1, '', now())""",
            vkey,
        )
        await w.send(9)
        await wait_stored(w.settings.database_url, w.org, 14)
        await w.cosigned_size(14)  # the witness has cosigned the new size: nothing was stopped
        served = await w.svc.client.get("/log/0/checkpoint", headers=w.headers)
        assert served.text.startswith(origin_of(w.settings.log_origin, 0) + "\n14\n")
        await w.svc.app.state.resources.writers.stop()
        await superuser(
            w.conn,
            """DELETE FROM audit_log WHERE batch_id IN
               (SELECT batch_id FROM audit_ledger WHERE seq >= 2)""",
            "DELETE FROM audit_ledger WHERE seq >= 2",
            """UPDATE audit_log_tiles SET hashes = substring(hashes FROM 1 FOR 160)
               WHERE level = 0 AND idx = 0""",
        )
        result = cli(w.env(), "verify")
        assert result.returncode == 1, result.stdout + result.stderr
        assert checks(result) == ["log_shorter_than_checkpoint"]


async def test_an_anchor_no_quorum_has_followed_for_too_long_is_not_anchored(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    """Leaves sealed past the newest cosigned checkpoint longer ago than
    AUDIT_THRESHOLD_UNWITNESSED_S: the verdict is not anchored, never intact."""
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        await w.send(3)
        await wait_stored(w.settings.database_url, w.org, 3)
        await w.cosigned_size(3)
        await w.svc.app.state.resources.writers.stop()  # no more checkpoints from here
        writer = BatchWriter(
            w.settings,
            w.svc.app.state.resources.stream,
            Metrics.create(),
            CircuitBreaker(3, Metrics.create()),
            "late",
        )
        await w.send(4)
        assert await writer.cycle(asyncio.Event()) == 1
        await writer.close()
        fresh = cli({**w.env(), "AUDIT_THRESHOLD_UNWITNESSED_S": "60"}, "verify")
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr  # 4 leaves past it, just now
        [anchor] = summary(fresh)["anchored"]
        assert (anchor["size"], anchor["leaves_after"], anchor["stale"]) == (3, 4, False)
        stale = cli({**w.env(), "AUDIT_THRESHOLD_UNWITNESSED_S": "0.01"}, "verify")
        assert stale.returncode == 3, stale.stdout + stale.stderr
        final = summary(stale)
        assert final["verdict"] == "not anchored" and final["unanchored_chains"] == [0]
        assert final["anchored"][0]["stale"] is True and "STALE" in stale.stderr


async def test_the_checkpoint_tables_and_the_tiles_refuse_truncate(
    sealed_factory: SealedFactory,
) -> None:
    sealed = await sealed_factory([2])
    for table in ("audit_checkpoints", "audit_checkpoint_cosignatures", "audit_log_tiles"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await sealed.conn.execute(f"TRUNCATE {table} CASCADE")
