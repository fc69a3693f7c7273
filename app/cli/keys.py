"""`python -m app keys create|list|revoke|seal`."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from app.core.config import Settings
from app.core.db import engine_scope
from app.core.service_macs import NoServiceKey, ServiceMac, ServiceMacs
from app.store import keyrows


def key_row_mac(settings: Settings) -> ServiceMac:
    """The MAC of API key rows: the service keys are needed to make or vouch for a key."""
    try:
        return ServiceMacs.of(settings.service_key_ring).api_keys
    except NoServiceKey as exc:
        raise SystemExit(str(exc)) from exc


async def keys_create(settings: Settings, org: str, scopes: str, name: str) -> str:
    from app.apikeys.keys import create_api_key, parse_scopes

    row_mac = key_row_mac(settings)
    async with engine_scope(settings) as engine:
        key_id, key = await create_api_key(engine, org, parse_scopes(scopes), name, row_mac)
    print(f"created key {key_id} for organization {org!r} with scopes {scopes}", file=sys.stderr)
    return key


async def keys_list(settings: Settings, org: str | None) -> None:
    """Every key row (never a key), and whether its MAC checks (`NOT SEALED`: refused)."""
    from app.apikeys.keys import row_vouched

    row_mac = key_row_mac(settings)
    async with engine_scope(settings) as engine, engine.connect() as conn:
        records = await keyrows.list_api_keys(conn, org)
    print("id\torganization\tname\tscopes\tprefix\tcreated\trevoked\tsealed")
    for r in records:
        sealed = "yes" if row_vouched(r, row_mac) else "NOT SEALED"
        print(
            f"{r.id}\t{r.organization_id}\t{r.name}\t{','.join(r.scopes)}\t{r.key_prefix}…\t"
            f"{r.created_at:%Y-%m-%dT%H:%M:%SZ}\t{r.revoked_at or '-'}\t{sealed}"
        )


async def keys_seal(settings: Settings, org: str | None) -> int:
    """Vouch, with the active service key, for the active rows that have no MAC yet (made
    before rows carried one; review them first with `keys list`) and for those vouched for by
    a key since retired; each is printed. Rows whose MAC fails are left refused."""
    from app.apikeys.keys import row_vouched, vouched_row

    row_mac = key_row_mac(settings)
    sealed = 0
    async with engine_scope(settings) as engine, engine.begin() as conn:
        for record in await keyrows.list_api_keys(conn, org):
            if record.revoked_at is not None or row_vouched(record, row_mac):
                continue
            if record.mac is not None and not row_vouched(record, row_mac, retired_ok=True):
                continue  # changed since it was vouched for: stays refused
            if await keyrows.vouch_api_key(conn, vouched_row(record, row_mac), record.mac):
                sealed += 1
                print(f"sealed {record.id}\t{record.organization_id}\t{record.name}")
    print(f"sealed {sealed} key rows", file=sys.stderr)
    return 0


async def keys_revoke(settings: Settings, key_id: str) -> bool:
    async with engine_scope(settings) as engine, engine.begin() as conn:
        return await keyrows.revoke_api_key(conn, uuid.UUID(key_id))


def _valid_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        try:
            key = asyncio.run(keys_create(settings, args.org, args.scopes, args.name or args.org))
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
        print(key)
    elif args.keys_command == "list":
        asyncio.run(keys_list(settings, args.org))
    elif args.keys_command == "seal":
        return asyncio.run(keys_seal(settings, args.org))
    elif not _valid_uuid(args.key_id):
        raise SystemExit(f"{args.key_id!r} is not a key id (see `keys list`)")
    elif not asyncio.run(keys_revoke(settings, args.key_id)):
        print(f"no active key {args.key_id}", file=sys.stderr)
        return 1
    else:
        print(f"revoked {args.key_id}")
    return 0
