"""Command-line side of tamper evidence: verify, checkpoint export, ledger-keygen. They need only
the database URL and the keys, not Redis or the API."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from app.core.config import Settings
from app.core.timefmt import parse_timestamp
from app.ledger.bundles import export_bundle, verify_bundle
from app.ledger.parallel_verify import verify_whole_chain
from app.ledger.proofs import check_checkpoint, export_checkpoint
from app.ledger.signing import new_keypair
from app.ledger.verify import Report, Verifier, verify_chains, verify_range
from app.ledger.verify_guard import NoVerificationKey, RangeError, resolve_range, verifier_for
from app.store.partitions import summarize_batch_ranges

PROGRESS_EVERY_S = 2.0


def _time(text: str | None) -> datetime | None:
    return parse_timestamp(text) if text else None


def run_verify(settings: Settings, args: Any) -> int:
    """Exit 0 when intact, 1 when anything broke, 2 when nothing could be verified (no key, a
    range the ledger does not have); findings on stdout, progress and refusals on stderr."""
    checkpoint = orjson.loads(Path(args.checkpoint).read_bytes()) if args.checkpoint else None
    try:
        verifier = verifier_for(
            settings.signing_keys_by_id,
            settings.ledger_keys_by_id,
            args.public_key or settings.ledger_public_key,
        )
        return asyncio.run(_verify(settings, args, verifier, checkpoint))
    except (NoVerificationKey, RangeError) as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return 2


async def _verify(
    settings: Settings, args: Any, verifier: Verifier, checkpoint: dict[str, Any] | None
) -> int:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        start, end = _time(args.start), _time(args.end)
        times = (start, end) if start and end else None
        chain = args.chain
        seqs = args.from_seq is not None or args.to_seq is not None or chain is not None
        await resolve_range(conn, chain, args.from_seq, args.to_seq)  # refuses what is not there
        await summarize_batch_ranges(conn)
        if not seqs and times is None and args.jobs > 1:
            report = await verify_whole_chain(conn, settings.asyncpg_dsn, verifier, args.jobs)
        elif not seqs:
            report = await verify_chains(conn, verifier, _progress_printer(), times=times)
        else:
            report = await verify_range(
                conn,
                verifier,
                args.from_seq or 1,
                args.to_seq,
                _progress_printer(),
                chain=chain or 0,
            )
        if checkpoint is not None:
            report.findings += await check_checkpoint(
                conn, checkpoint, settings.ledger_keys_by_id, verifier.public_key
            )
    finally:
        await conn.close()
    for finding in report.findings:
        print(orjson.dumps(finding.as_dict()).decode())
    print(orjson.dumps({**report.summary(), "checked": verifier.checked}).decode())
    if report.entries == 0:
        print("verify: nothing to verify: the ledger (or this range) is empty", file=sys.stderr)
    return 0 if report.intact else 1


def _progress_printer() -> Any:
    last = [time.monotonic()]

    def progress(report: Report) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            print(
                f"verified {report.entries} ledger entries, {report.events} events", file=sys.stderr
            )

    return progress


async def _newest_checkpoint(settings: Settings) -> dict[str, Any] | None:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        return await export_checkpoint(conn)
    finally:
        await conn.close()


def run_checkpoint_export(settings: Settings, out: str | None) -> int:
    checkpoint = asyncio.run(_newest_checkpoint(settings))
    if checkpoint is None:
        print("the ledger is empty: nothing to export", file=sys.stderr)
        return 1
    text = orjson.dumps(checkpoint, option=orjson.OPT_INDENT_2).decode() + "\n"
    if out:
        Path(out).write_text(text)
        print(f"wrote checkpoint of seq {checkpoint['seq']} to {out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def run_export_bundle(settings: Settings, args: Any) -> int:
    start, end = parse_timestamp(args.start), parse_timestamp(args.end)
    lines = asyncio.run(_bundle_lines(settings, start, end, args.org))
    Path(args.out).write_bytes(b"".join(lines))
    counts = {
        k: sum(1 for line in lines if line.startswith(b'{"' + k.encode()))
        for k in ("ledger", "event", "leaf")
    }
    print(
        f"wrote {args.out}: {counts['event']} events, {counts['ledger']} ledger entries, "
        f"{counts['leaf']} other leaves",
        file=sys.stderr,
    )
    return 0


async def _bundle_lines(
    settings: Settings, start: datetime, end: datetime, org: str | None
) -> list[bytes]:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        return [line async for line in export_bundle(conn, start, end, org)]
    finally:
        await conn.close()


def run_verify_bundle(settings: Settings, args: Any) -> int:
    """No database: the bundle, the HMAC keys if this auditor has them, the public key."""
    try:
        verifier = verifier_for(
            settings.signing_keys_by_id,
            settings.ledger_keys_by_id,
            args.public_key or settings.ledger_public_key,
        )
    except NoVerificationKey as exc:
        print(f"verify-bundle: {exc}", file=sys.stderr)
        return 2
    with Path(args.bundle).open("rb") as bundle:
        report = verify_bundle(bundle, verifier)
    for finding in report.findings:
        print(orjson.dumps(finding.as_dict()).decode())
    print(orjson.dumps({**report.summary(), "checked": verifier.checked}).decode())
    return 0 if report.intact else 1


def run_ledger_keygen() -> int:
    private, public = new_keypair()
    print("# Ed25519 key pair for ledger heads. Keep the private key with the writers only;")
    print("# give the public key to auditors (AUDIT_LEDGER_PUBLIC_KEY or --public-key).")
    print(f"AUDIT_LEDGER_PRIVATE_KEY={private}")
    print(f"AUDIT_LEDGER_PUBLIC_KEY={public}")
    return 0


def _integrity(settings: Settings, args: argparse.Namespace) -> int:
    from app.cli.integrity import run_checkpoint_export, run_export_bundle, run_verify

    if args.command == "export-bundle":
        return run_export_bundle(settings, args)
    if args.command == "verify":
        if bool(args.start) != bool(args.end):
            raise SystemExit("give both --start and --end")
        return run_verify(settings, args)
    return run_checkpoint_export(settings, args.out)
