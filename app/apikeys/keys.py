"""API keys: bearer tokens bound to one organization with scopes; stored only as SHA-256."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.apikeys.scopes import ALL_SCOPES as ALL_SCOPES
from app.core.service_macs import ServiceMac
from app.core.timefmt import format_timestamp
from app.store import keyrows

KEY_PREFIX = "aik_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    # Keys carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).digest()


def parse_scopes(raw: str) -> list[str]:
    scopes = sorted({s.strip() for s in raw.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a comma list of {', '.join(ALL_SCOPES)}")
    return scopes


def key_row_parts(record: keyrows.ApiKeyRecord) -> tuple[bytes, ...]:
    """What a key row's MAC covers: everything it grants, and to whom."""
    return (
        str(record.id).encode(),
        record.organization_id.encode(),
        record.name.encode(),
        ",".join(sorted(record.scopes)).encode(),
        record.key_hash,
        record.key_prefix.encode(),
        format_timestamp(record.created_at).encode(),
    )


def row_vouched(
    record: keyrows.ApiKeyRecord, row_mac: ServiceMac, *, retired_ok: bool = False
) -> bool:
    """`keys create` (or `keys seal`) made this row as it is: its MAC checks, with a key not
    retired (or, `retired_ok`, with any key of the ring)."""
    if record.mac is None or record.mac_key_id is None:
        return False
    return row_mac.check(
        record.mac_key_id, record.mac, *key_row_parts(record), retired_ok=retired_ok
    )


def vouched_row(record: keyrows.ApiKeyRecord, row_mac: ServiceMac) -> keyrows.ApiKeyRecord:
    key_id, mac = row_mac.sign(*key_row_parts(record))
    return replace(record, mac=mac, mac_key_id=key_id)


async def create_api_key(
    engine: AsyncEngine, organization_id: str, scopes: list[str], name: str, row_mac: ServiceMac
) -> tuple[str, str]:
    """Store a new key's hash, with the row's MAC; returns (key id, the key, shown once)."""
    if not organization_id.strip():
        raise ValueError("organization must not be empty")
    key = new_api_key()
    record = keyrows.ApiKeyRecord(
        id=uuid.uuid4(),
        organization_id=organization_id,
        name=name,
        scopes=tuple(sorted(scopes)),
        key_prefix=key[: len(KEY_PREFIX) + 6],
        created_at=datetime.now(UTC),
        revoked_at=None,
        key_hash=hash_api_key(key),
    )
    async with engine.begin() as conn:
        await keyrows.insert_api_key(conn, vouched_row(record, row_mac))
    return str(record.id), key
