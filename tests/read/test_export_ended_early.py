"""An export is recorded at its start and, whatever ends it, at its end with the rows it sent:
a client that reads part of a large export and hangs up leaves a record that says so."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncpg
import httpx
import orjson

from app.apikeys.keys import create_api_key
from app.core.db import engine_scope
from tests.conftest import SettingsFactory, event, eventually, key_row_mac, wait_stored
from tests.served import served

EVENTS = 20_000  # megabytes of CSV: far more than the socket buffers hold
READ_BYTES = 256 * 1024


def read_part_and_hang_up(port: int, key: str, path: str) -> int:
    """Ask for the export, read READ_BYTES of it and close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        request = f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\r\n"
        sock.sendall(request.encode())
        got = b""
        while len(got) < READ_BYTES:
            chunk = sock.recv(65536)
            assert chunk, "the export ended before the client hung up"
            got += chunk
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        return len(got)


async def export_records(database_url: str, org: str, key_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT details FROM audit_log WHERE organization_id = $1 AND principal_id = $2"
            " AND action = 'audit.export' ORDER BY received_at",
            org,
            key_id,
        )
    finally:
        await conn.close()
    return [orjson.loads(r["details"]) for r in rows]


async def test_an_export_cut_short_by_its_client_records_what_was_sent(
    settings_factory: SettingsFactory, org: str
) -> None:
    settings = settings_factory()
    async with engine_scope(settings) as engine:
        _, writer = await create_api_key(engine, org, ["ingest"], "writer", key_row_mac(settings))
        key_id, reader = await create_api_key(
            engine, org, ["read"], "reader", key_row_mac(settings)
        )
    async with served(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for _ in range(EVENTS // 10_000):
                posted = await client.post(
                    "/events/bulk",
                    json=[event(patient_id="p-1")] * 10_000,
                    headers={"Authorization": f"Bearer {writer}"},
                )
                assert posted.status_code == 202, posted.text[:200]
        await wait_stored(settings.database_url, org, EVENTS, within_s=60)
        for fmt in ("csv", "ndjson"):
            path = f"/events/export?format={fmt}&patient_id=p-1"
            await asyncio.to_thread(read_part_and_hang_up, server.port, reader, path)

            async def ended(fmt: str = fmt) -> bool:
                records = await export_records(settings.database_url, org, key_id)
                return any(
                    r["query"].get("phase") != "start" and r["query"].get("format") == fmt
                    for r in records
                )

            await eventually(ended, within_s=20)
        records = await export_records(settings.database_url, org, key_id)
        ends = [r for r in records if r["query"]["phase"] != "start"]
        assert len(ends) == 2, records
        for record in ends:
            query = record["query"]
            assert query["phase"] == "ended_early", record
            assert query["ended"] == "client_disconnected", record
            assert 0 < record["rows"] < EVENTS, record
        # Read to the end, the same export is recorded complete with every row.
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            whole = await client.get(
                "/events/export",
                params={"format": "fhir", "patient_id": "p-1"},
                headers={"Authorization": f"Bearer {reader}"},
            )
            assert len(whole.json()["entry"]) == EVENTS

        async def completed() -> bool:
            records = await export_records(settings.database_url, org, key_id)
            return any(r["query"]["phase"] == "complete" for r in records)

        await eventually(completed, within_s=20)
        records = await export_records(settings.database_url, org, key_id)
        done = [r for r in records if r["query"]["phase"] == "complete"]
        assert [(r["rows"], "ended" in r["query"]) for r in done] == [(EVENTS, False)]
