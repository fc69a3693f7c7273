"""API key rows are protected: each carries a MAC with the service key over what it grants, so a
row inserted or changed around `keys create` (a minted key, widened scopes, another
organization) is refused and counted; a trigger lets the service's roles only revoke a key,
never change or delete one; `keys seal` vouches for rows made before rows carried MACs."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.apikeys.keys import hash_api_key, new_api_key
from app.core.config import parse_signing_keys
from app.core.service_macs import ServiceMac, ServiceMacs
from app.queue.stream import EventStream
from tests.conftest import Service, SettingsFactory, event, running


def cli(
    service: Service, *args: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    settings = service.settings
    env = {
        **os.environ,
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_SERVICE_KEYS": settings.service_keys,
        "AUDIT_LOG_LEVEL": "WARNING",
        **(extra or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def _refusals(service: Service) -> float:
    metric = service.app.state.metrics.api_key_rows_refused
    return float(metric._value.get())


async def test_a_key_row_inserted_around_the_service_is_refused(
    service: Service, org: str, database_url: str
) -> None:
    minted = new_api_key()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO api_keys (id, organization_id, name, scopes, key_hash, key_prefix,"
            " created_at) VALUES ($1, $2, 'minted', $3, $4, 'aik_xx', now())",
            uuid.uuid4(),
            org,
            ["ingest", "read", "admin"],
            hash_api_key(minted),
        )
    finally:
        await conn.close()
    before = await _refusals(service)
    headers = {"Authorization": f"Bearer {minted}"}
    assert (await service.client.post("/events", json=event(), headers=headers)).status_code == 401
    assert await _refusals(service) == before + 1
    listing = cli(service, "keys", "list", "--org", org)
    assert listing.returncode == 0 and "minted" in listing.stdout
    assert "NOT SEALED" in listing.stdout


async def test_a_changed_key_row_is_refused(service: Service, org: str, database_url: str) -> None:
    created = cli(service, "keys", "create", "--org", org, "--scopes", "ingest", "--name", "ehr")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    assert (await service.client.post("/events", json=event(), headers=headers)).status_code == 202
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE api_keys SET scopes = '{ingest,read,admin}' WHERE key_hash = $1",
            hash_api_key(key),
        )
    finally:
        await conn.close()
    assert (await service.client.get("/events", headers=headers)).status_code == 401
    assert (await service.client.post("/events", json=event(), headers=headers)).status_code == 401


async def test_the_service_roles_may_revoke_a_key_and_nothing_else(
    service: Service, org: str, database_url: str
) -> None:
    created = cli(service, "keys", "create", "--org", org, "--scopes", "ingest", "--name", "ehr")
    key = created.stdout.strip().splitlines()[-1]
    role = f"audit_keys_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        try:
            await conn.execute(f'CREATE ROLE "{role}" NOLOGIN IN ROLE audit_writer')
        except asyncpg.InsufficientPrivilegeError:
            pytest.skip("cannot create roles on this server")
        await conn.execute(f'GRANT UPDATE, DELETE ON api_keys TO "{role}"')  # granted by mistake
        await conn.execute(f'SET ROLE "{role}"')
        where = "WHERE key_hash = $1"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                f"UPDATE api_keys SET scopes = '{{admin}}' {where}", hash_api_key(key)
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"DELETE FROM api_keys {where}", hash_api_key(key))
        await conn.execute(f"UPDATE api_keys SET revoked_at = now() {where}", hash_api_key(key))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # no un-revoking
            await conn.execute(f"UPDATE api_keys SET revoked_at = NULL {where}", hash_api_key(key))
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute(f'REVOKE ALL ON api_keys FROM "{role}"')
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        await conn.close()


async def test_keys_seal_vouches_for_rows_made_before_macs(
    service: Service, org: str, database_url: str
) -> None:
    older = new_api_key()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO api_keys (id, organization_id, name, scopes, key_hash, key_prefix,"
            " created_at) VALUES ($1, $2, 'older', $3, $4, 'aik_yy', $5)",
            uuid.uuid4(),
            org,
            ["ingest"],
            hash_api_key(older),
            datetime(2026, 11, 1, tzinfo=UTC),
        )
    finally:
        await conn.close()
    headers = {"Authorization": f"Bearer {older}"}
    assert (await service.client.post("/events", json=event(), headers=headers)).status_code == 401
    sealed = cli(service, "keys", "seal", "--org", org)
    assert sealed.returncode == 0, sealed.stderr
    assert "older" in sealed.stdout
    service.app.state.resources.key_cache._unknown.clear()  # past the brief negative cache
    assert (await service.client.post("/events", json=event(), headers=headers)).status_code == 202


async def test_a_retired_service_key_vouches_for_nothing_until_sealed_again(
    settings_factory: SettingsFactory, org: str
) -> None:
    old, new = (
        f"{name}:" + base64.b64encode(byte * 32).decode()
        for name, byte in (("service-old", b"o"), ("service-new", b"n"))
    )
    async with running(settings_factory(service_keys=old)) as svc:
        headers = await svc.key(org, ("ingest",))
    rotated = settings_factory(service_keys=f"{new},{old}@2020-01-01T00:00:00Z", run_writers=False)
    async with running(rotated) as svc:
        refused = await svc.client.post("/events", json=event(), headers=headers)
        assert refused.status_code == 401  # the row was vouched for by a retired key
        env_service = {"AUDIT_SERVICE_KEYS": rotated.service_keys}
        sealed = cli(svc, "keys", "seal", "--org", org, extra=env_service)
        assert sealed.returncode == 0 and "sealed" in sealed.stdout, sealed.stderr
        assert (await svc.client.post("/events", json=event(), headers=headers)).status_code == 202
        # An entry vouched for by the retired key is no entry of this service's any more.
        stream = svc.app.state.resources.stream.shards[0]
        records: list[Any] = [{"organization_id": org, "priority": "normal", "n": 1}]
        legacy = EventStream(stream.client, stream.keys, stream.group, _entry_mac(old))
        await legacy.enqueue(records, 10)
        [entry] = [e for e in await stream.read("probe", 10, None) if e.mac_key == "service-old"]
        assert not entry.vouched(svc.app.state.resources.macs.entries)


def _entry_mac(ring: str) -> ServiceMac:
    return ServiceMacs.of(parse_signing_keys(ring)).entries
