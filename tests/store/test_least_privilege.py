"""The service as compose runs it: login roles made by deploy/postgres-roles.sh, migrations as
the owner, the API as audit_api (SELECT only) and a worker as audit_worker (INSERT, no UPDATE or
DELETE). Events are accepted, sealed and verified, and the worker's watch records a case among
them; neither role can change an audit row or make an API key. The worker's metrics listen on
loopback and want the metrics token."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from app.apikeys.keys import create_api_key
from app.cli.migrate import migrate
from app.core.config import Settings
from app.core.db import engine_scope
from app.local.servers import free_port
from tests.conftest import (
    SettingsFactory,
    eventually,
    key_row_mac,
    stored_rows,
    wait_stored,
    with_database,
)
from tests.served import environment, served

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-" + uuid.uuid4().hex


def as_role(url: str, role: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{role}@{rest.split('@', 1)[-1]}"


@pytest.fixture
async def deployed(server_url: str) -> AsyncIterator[str]:
    """A fresh database with the roles and the migrations, as the compose file makes them."""
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    name = f"audit_roles_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    try:
        env = {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "POSTGRES_USER": (await admin.fetchval("SELECT current_user")),
            "POSTGRES_DB": name,
            "AUDIT_API_DB_PASSWORD": uuid.uuid4().hex,
            "AUDIT_WORKER_DB_PASSWORD": uuid.uuid4().hex,
        }
        for _ in range(2):  # safe to run again
            process = await asyncio.create_subprocess_exec(
                str(ROOT / "deploy" / "postgres-roles.sh"), env=env
            )
            assert await process.wait() == 0
        await asyncio.to_thread(migrate, Settings(database_url=url, _env_file=None))
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_service_runs_as_its_least_privileged_roles(
    deployed: str, settings_factory: SettingsFactory, org: str
) -> None:
    owner = settings_factory(database_url=deployed)
    async with engine_scope(owner) as engine:  # `keys create`, as the owner runs it
        _, key = await create_api_key(
            engine, org, ["ingest", "read", "verify"], "ehr", key_row_mac(owner)
        )
    headers = {"Authorization": f"Bearer {key}"}
    api = owner.model_copy(update={"database_url": as_role(deployed, "audit_api")})
    worker = owner.model_copy(update={"database_url": as_role(deployed, "audit_worker")})
    port = free_port()
    env = {
        **os.environ,
        **environment(
            worker,
            writers=1,
            worker_metrics_port=port,
            watch_enabled="true",
            watch_interval_s=0.05,
        ),
    }
    env["AUDIT_METRICS_TOKEN"] = TOKEN
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "worker", env=env)
    try:
        async with served(api, run_writers="false") as app:
            async with httpx.AsyncClient(base_url=app.url, timeout=10) as client:
                read: dict[str, object] = {
                    "action": "fhir.patient.read",
                    "status": "success",
                    "principal_id": "p",
                }
                sent = [read, {**read, "patient_id": "p-1", "break_glass": True}]
                resp = await client.post("/events/bulk", json=sent * 20, headers=headers)
                assert resp.status_code == 202, resp.text
                # The worker's watch stores the break-glass case and records it: 41 events.
                await wait_stored(deployed, org, 41, within_s=30)
                verified = await client.get("/integrity/verify", headers=headers)
                summary = orjson.loads(verified.text.splitlines()[-1])["summary"]
                assert summary["intact"] and summary["events"] >= 41
        await _worker_metrics(port)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 20)
    actions = [r["action"] for r in await stored_rows(deployed, org)]
    assert len([a for a in actions if not a.startswith("audit.")]) == 40
    assert actions.count("audit.alert.raised") == 1
    for role, sql in (
        ("audit_worker", "UPDATE audit_log SET principal_id = 'x'"),
        ("audit_worker", "DELETE FROM audit_ledger"),
        ("audit_api", "UPDATE audit_log SET principal_id = 'x'"),
        (
            "audit_api",
            "INSERT INTO api_keys (id, organization_id, name, scopes, key_hash,"
            " key_prefix, created_at) VALUES (gen_random_uuid(), 'x', 'x', '{admin}', 'x', 'x',"
            " now())",
        ),
    ):
        conn = await asyncpg.connect(as_role(deployed, role))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        finally:
            await conn.close()


async def _worker_metrics(port: int) -> None:
    url = f"http://127.0.0.1:{port}/metrics"
    async with httpx.AsyncClient(timeout=5) as client:

        async def up() -> bool:
            try:
                await client.get(url)
            except httpx.TransportError:
                return False
            return True

        await eventually(up, within_s=20)
        assert (await client.get(url)).status_code == 401
        shown = await client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert shown.status_code == 200 and "audit_events_persisted_total" in shown.text
    assert _listening(port) == [f"0100007F:{port:04X}"]  # 127.0.0.1 only


def _listening(port: int) -> list[str]:
    """The local addresses (hex, as the kernel shows them) listening on `port`."""
    return [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
    ]
