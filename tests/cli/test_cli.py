"""`python -m app keys ...` as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from app.apikeys.keys import hash_api_key
from app.store.keyrows import active_key_by_hash
from tests.conftest import TEST_SERVICE_KEYS, Service, event


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AUDIT_DATABASE_URL": database_url,
        "AUDIT_SERVICE_KEYS": TEST_SERVICE_KEYS,
        "AUDIT_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_keys_create_list_revoke(service: Service, org: str, database_url: str) -> None:
    created = cli(
        database_url, "keys", "create", "--org", org, "--scopes", "ingest,read", "--name", "ehr"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("aik_")
    async with service.app.state.resources.engine.connect() as conn:
        record = await active_key_by_hash(conn, hash_api_key(key))
    assert record is not None and record.organization_id == org
    assert record.scopes == ("ingest", "read") and record.name == "ehr"

    headers = {"Authorization": f"Bearer {key}"}
    assert (await service.client.post("/events", json=event(), headers=headers)).status_code == 202

    listing = cli(database_url, "keys", "list", "--org", org)
    assert listing.returncode == 0
    assert str(record.id) in listing.stdout and key not in listing.stdout

    revoked = cli(database_url, "keys", "revoke", str(record.id))
    assert revoked.returncode == 0, revoked.stderr
    assert (await service.client.post("/events", json=event(), headers=headers)).status_code == 401
    again = cli(database_url, "keys", "revoke", str(record.id))
    assert again.returncode == 1


def test_bad_cli_input_is_refused(database_url: str) -> None:
    bad_scope = cli(database_url, "keys", "create", "--org", "x", "--scopes", "root")
    assert bad_scope.returncode != 0 and "scopes must be" in bad_scope.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        env={k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert missing.returncode != 0 and "AUDIT_DATABASE_URL" in missing.stderr


def test_partitions_ensure_creates_months_ahead_once(database_url: str) -> None:
    first = cli(database_url, "partitions", "ensure", "--months", "9")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith("months ahead: 9")
    again = cli(database_url, "partitions", "ensure", "--months", "9")
    assert again.stdout.startswith("created 0 partitions")
