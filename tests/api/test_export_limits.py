"""A slow reader cannot starve other tenants: exports run on their own connections, at most a
few at once per key and per organization (429 beyond), and one whose client stops reading is
ended after the send timeout; a revoked key stops working within the cache time even while
the service is busy."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from app.apikeys.keys import create_api_key
from app.core.db import engine_scope
from tests.conftest import SettingsFactory, event, key_row_mac, wait_stored
from tests.served import Served, served

EVENTS = 20_000  # about 9 MB of CSV: more than the socket buffers hold
STALLED = 20
SEND_TIMEOUT_S = 3


@dataclass
class Tenants:
    process: Served
    database_url: str
    org_a: str
    keys: dict[str, tuple[str, str]]  # name -> (key id, key)

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name][1]}"}


@pytest.fixture
async def tenants(settings_factory: SettingsFactory, org: str) -> AsyncIterator[Tenants]:
    settings = settings_factory(auth_cache_seconds=1)
    keys = {}
    async with engine_scope(settings) as engine:
        for name, organization, scopes in (
            ("a1", org, ["ingest", "read"]),
            ("a2", org, ["read"]),
            ("a3", org, ["read"]),
            ("b", f"{org}-b", ["read"]),
            ("b-ingest", f"{org}-b", ["ingest"]),
        ):
            keys[name] = await create_api_key(
                engine, organization, scopes, name, key_row_mac(settings)
            )
    limits = {
        "export_per_key": 2,
        "export_per_org": 3,
        "export_concurrency": 4,
        "export_send_timeout_s": SEND_TIMEOUT_S,
        "auth_cache_seconds": 1,
    }
    async with served(settings, **limits) as process:
        found = Tenants(process, settings.database_url, org, keys)
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
            for _ in range(EVENTS // 10_000):
                resp = await client.post(
                    "/events/bulk", json=[event()] * 10_000, headers=found.bearer("a1")
                )
                assert resp.status_code == 202, resp.text[:200]
        await wait_stored(settings.database_url, org, EVENTS, within_s=60)
        yield found


def _unread_export(port: int, key: str) -> socket.socket:
    """A client that asks for a CSV export and never reads it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /events/export?format=csv HTTP/1.1\r\nHost: test\r\n"
        + f"Authorization: Bearer {key}\r\n\r\n".encode()
    )
    return sock


def _status(sock: socket.socket) -> int:
    head = sock.recv(64)
    return int(head.split(b" ", 2)[1])


async def test_unread_exports_cannot_starve_other_tenants(tenants: Tenants) -> None:
    port = tenants.process.port
    stalled = [_unread_export(port, tenants.keys["a1"][1]) for _ in range(STALLED)]
    try:
        await asyncio.sleep(1.0)
        statuses = [_status(sock) for sock in stalled]
        assert statuses.count(200) == 2, statuses  # the key's share; the rest refused at once
        assert statuses.count(429) == STALLED - 2, statuses
        async with httpx.AsyncClient(base_url=tenants.process.url, timeout=10) as client:
            started = time.monotonic()
            other = await client.get("/events", params={"limit": 5}, headers=tenants.bearer("b"))
            assert other.status_code == 200, other.text
            assert time.monotonic() - started < 2.0
            # The organization's share: a second key gets one more export, a third none.
            second = _unread_export(port, tenants.keys["a2"][1])
            stalled.append(second)
            assert _status(second) == 200
            third = await client.get("/events/export", headers=tenants.bearer("a3"))
            assert third.status_code == 429 and "Retry-After" in third.headers
            assert third.json()["error"]["code"] == "too_many_exports"
            # Clients that stopped reading are let go after the send timeout: the slots free.
            deadline = time.monotonic() + SEND_TIMEOUT_S + 10
            while True:
                again = await client.get("/events/export", headers=tenants.bearer("a3"))
                if again.status_code == 200:
                    break
                assert time.monotonic() < deadline, "stalled exports were never ended"
                await asyncio.sleep(0.5)
    finally:
        for sock in stalled:
            sock.close()


async def test_a_revoked_key_stops_within_the_cache_time_while_exports_stall(
    tenants: Tenants,
) -> None:
    port = tenants.process.port
    stalled = [_unread_export(port, tenants.keys["a1"][1]) for _ in range(STALLED)]
    try:
        async with httpx.AsyncClient(base_url=tenants.process.url, timeout=10) as client:
            key_id = tenants.keys["b-ingest"][0]
            headers = tenants.bearer("b-ingest")
            assert (await client.post("/events", json=event(), headers=headers)).status_code == 202
            conn = await asyncpg.connect(tenants.database_url)
            try:
                await conn.execute(
                    "UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid", key_id
                )
            finally:
                await conn.close()
            revoked = time.monotonic()
            while (await client.post("/events", json=event(), headers=headers)).status_code != 401:
                assert time.monotonic() - revoked < 4.0, "a revoked key kept working"
                await asyncio.sleep(0.2)
    finally:
        for sock in stalled:
            sock.close()
