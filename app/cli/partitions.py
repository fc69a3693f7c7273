"""`python -m app partitions prune`: one JSON line per partition, then a summary line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from app.core.config import Settings, parse_retention
from app.core.db import connect_raw, engine_scope
from app.ledger.prune import PruneRefused, count_rows, cutoff, partitions_past, prune_partition
from app.store import partitions as store_partitions


async def prune(settings: Settings, older_than: str, dry_run: bool) -> dict[str, Any]:
    """Prune (or, dry, list) every monthly partition ending before now minus `older_than`."""
    months = parse_retention(older_than)
    before = cutoff(months)
    if not dry_run and not settings.ledger_key_ring:
        raise SystemExit("AUDIT_LEDGER_KEYS must be set: prune records are signed")
    conn = await connect_raw(settings)
    done: list[dict[str, Any]] = []
    try:
        for part in await partitions_past(conn, before):
            if dry_run:
                line = {
                    "partition": part.name,
                    "range_start": part.range_start.isoformat(),
                    "range_end": part.range_end.isoformat(),
                    "events": await count_rows(conn, part),
                    "would_prune": True,
                }
            else:
                line = await prune_partition(conn, part, settings.ledger_key_ring[0])
            print(json.dumps(line), flush=True)
            done.append(line)
    finally:
        await conn.close()
    return {
        "dry_run": dry_run,
        "older_than": older_than,
        "cutoff": before.isoformat(),
        "partitions": len(done),
        "events": sum(line["events"] for line in done),
    }


def run_prune(settings: Settings, older_than: str, dry_run: bool) -> int:
    try:
        summary = asyncio.run(prune(settings, older_than, dry_run))
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    except PruneRefused as exc:
        print(f"prune refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


async def _ensure_partitions(settings: Settings, months: int) -> int:
    async with engine_scope(settings) as engine:
        return await store_partitions.ensure_partitions(engine, months)


def _partitions(settings: Settings, args: argparse.Namespace) -> int:
    if args.partitions_command == "prune":
        from app.cli.partitions import run_prune

        return run_prune(settings, args.older_than or settings.retention, args.dry_run)
    months = args.months or settings.partitions_ahead_months
    created = asyncio.run(_ensure_partitions(settings, months))
    print(f"created {created} partitions; months ahead: {months}")
    return 0
