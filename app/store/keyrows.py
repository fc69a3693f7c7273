"""API key rows: insert, vouch for (store a new MAC), look up, list and revoke. Keys are stored
only as hashes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import api_keys


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: uuid.UUID
    organization_id: str
    name: str
    scopes: tuple[str, ...]
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    key_hash: bytes = b""
    mac: bytes | None = None
    mac_key_id: str | None = None


def _key_record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        organization_id=row.organization_id,
        name=row.name,
        scopes=tuple(row.scopes),
        key_prefix=row.key_prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        key_hash=bytes(row.key_hash),
        mac=bytes(row.mac) if row.mac is not None else None,
        mac_key_id=row.mac_key_id,
    )


async def insert_api_key(conn: AsyncConnection, record: ApiKeyRecord) -> None:
    await conn.execute(
        api_keys.insert().values(
            id=record.id,
            organization_id=record.organization_id,
            name=record.name,
            scopes=list(record.scopes),
            key_hash=record.key_hash,
            key_prefix=record.key_prefix,
            created_at=record.created_at,
            mac=record.mac,
            mac_key_id=record.mac_key_id,
        )
    )


async def vouch_api_key(
    conn: AsyncConnection, vouched: ApiKeyRecord, previous_mac: bytes | None
) -> bool:
    """Store a row's new MAC, if its MAC is still `previous_mac` (as the table's owner: the
    trigger refuses others)."""
    c = api_keys.c
    current = c.mac.is_(None) if previous_mac is None else c.mac == previous_mac
    result = await conn.execute(
        update(api_keys)
        .where(c.id == vouched.id, c.revoked_at.is_(None), current)
        .values(mac=vouched.mac, mac_key_id=vouched.mac_key_id)
    )
    return bool(result.rowcount)


async def active_key_by_hash(conn: AsyncConnection, key_hash: bytes) -> ApiKeyRecord | None:
    row = (
        await conn.execute(
            select(api_keys).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        )
    ).first()
    return _key_record(row) if row else None


async def list_api_keys(conn: AsyncConnection, organization_id: str | None) -> list[ApiKeyRecord]:
    query = select(api_keys).order_by(api_keys.c.organization_id, api_keys.c.created_at)
    if organization_id is not None:
        query = query.where(api_keys.c.organization_id == organization_id)
    return [_key_record(row) for row in await conn.execute(query)]


async def revoke_api_key(conn: AsyncConnection, key_id: uuid.UUID) -> bool:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return bool(result.rowcount)
