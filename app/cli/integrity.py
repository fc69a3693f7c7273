"""Command-line side of tamper evidence: verify, checkpoint export, ledger-keygen. They need only
the database URL and the keys, not Redis or the API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from app.core.config import Settings
from app.core.timefmt import parse_timestamp
from app.ledger.anchor import BROKEN, INTACT, NOT_ANCHORED, Anchors, anchor_report
from app.ledger.bundle_anchor import PINNED_SOURCE, parse_witness_keys
from app.ledger.bundles import BundleAnchors, BundleReport, export_bundle, verify_bundle
from app.ledger.checkpoints import log_keys, origin_of
from app.ledger.parallel_verify import verify_whole_chain
from app.ledger.proofs import check_checkpoint, export_checkpoint
from app.ledger.signing import PublicSigner, new_keypair
from app.ledger.verify import Report, Verifier, chain_ids, verify_chains, verify_range
from app.ledger.verify_conn import read_times_as_text
from app.ledger.verify_guard import NoVerificationKey, RangeError, resolve_range, verifier_for
from app.ledger.witnessing import parse_witnesses
from app.store.partitions import summarize_batch_ranges
from app.witness.anchors import anchor_policy, find_anchors

PROGRESS_EVERY_S = 2.0

# A verification holds the rows of a part or two as asyncpg Records, containers the cycle
# collector tracks though they hold no cycles: at the default threshold of 700 it ran some 570
# times over 200,000 events, 0.6-1.3 s of a run of about 4 s CPU, and found a few hundred objects
# in cycles in all. At 50,000 it runs when a run keeps that many more containers than it frees,
# which a verification's parts do not; the few cycles wait for a later collection or the exit.
VERIFY_GC_THRESHOLD = 50_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    previous = gc.get_threshold()
    gc.set_threshold(VERIFY_GC_THRESHOLD, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _time(text: str | None) -> datetime | None:
    return parse_timestamp(text) if text else None


NOT_ANCHORED_EXIT = 3

EXIT_CODES = {INTACT: 0, BROKEN: 1, NOT_ANCHORED: NOT_ANCHORED_EXIT}

SHOWN_REFUSALS = 5


def _given_checkpoint(path: str | None) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """--checkpoint: a JSON ledger head (`checkpoint export`) or a cosigned checkpoint note."""
    if not path:
        return None, []
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"{"):
        return orjson.loads(data), []
    return None, [(f"file {path}", data.decode("utf-8", "replace"))]


def run_verify(settings: Settings, args: Any) -> int:
    """Exit 0 when intact and anchored to a cosigned checkpoint, 1 when anything broke, 2 when
    nothing could be verified (no key, a range the ledger does not have), 3 when nothing broke
    but no cosigned checkpoint anchors it; findings on stdout, progress and refusals on
    stderr."""
    checkpoint, notes = _given_checkpoint(args.checkpoint)
    try:
        verifier = verifier_for(
            settings.signing_keys_by_id,
            settings.ledger_keys_by_id,
            args.public_key or settings.ledger_public_key,
            operations_org=settings.operations_org,
        )
        with _fewer_collections():
            return asyncio.run(_verify(settings, args, verifier, checkpoint, notes))
    except (NoVerificationKey, RangeError) as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return 2


async def _verify(
    settings: Settings,
    args: Any,
    verifier: Verifier,
    checkpoint: dict[str, Any] | None,
    notes: list[tuple[str, str]],
) -> int:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await read_times_as_text(conn)
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
        anchors = await find_anchors(settings, conn, notes)
        chains = [chain] if chain is not None else await chain_ids(conn)
        await anchor_report(
            conn, report, anchors, chains, stale_after_s=settings.threshold_unwitnessed_s
        )
    finally:
        await conn.close()
    for finding in report.findings:
        print(orjson.dumps(finding.as_dict()).decode())
    print(orjson.dumps({**report.summary(), "checked": verifier.checked}).decode())
    _say_anchoring(report, anchors.refused)
    if report.entries == 0 and not report.findings:
        print("verify: nothing to verify: the ledger (or this range) is empty", file=sys.stderr)
        return 2
    return EXIT_CODES[report.verdict]


def _say_anchoring(report: Report, refused: list[str]) -> None:
    for anchor in report.anchors or []:
        print(_anchored("verify", anchor), file=sys.stderr)
    for line in refused[:SHOWN_REFUSALS]:
        print(f"verify: not an anchor: {line}", file=sys.stderr)
    if len(refused) > SHOWN_REFUSALS:
        print(
            f"verify: {len(refused) - SHOWN_REFUSALS} more checkpoints are not anchors",
            file=sys.stderr,
        )
    if report.verdict == NOT_ANCHORED and report.entries:
        chains = ", ".join(map(str, report.unanchored)) or "any"
        print(
            f"verify: NOT ANCHORED: no checkpoint cosigned by a quorum of witnesses covers chain "
            f"{chains} (none at all, or leaves sealed past the newest one longer ago than "
            f"AUDIT_THRESHOLD_UNWITNESSED_S); what is not covered rests on the database alone "
            f"(exit {NOT_ANCHORED_EXIT})",
            file=sys.stderr,
        )


def _anchored(command: str, anchor: dict[str, Any]) -> str:
    return (
        f"{command}: chain {anchor['chain']} anchored to size {anchor['size']} (seq "
        f"{anchor['seq']}, sealed {anchor['sealed_at']}), cosigned by "
        f"{', '.join(anchor['witnesses'])} at {anchor['cosigned_at']}"
        + (f"; {anchor['leaves_after']} leaves sealed since" if anchor.get("leaves_after") else "")
        + ("; STALE" if anchor.get("stale") else "")
    )


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
    lines, anchors = asyncio.run(_bundle_lines(settings, start, end, args.org))
    Path(args.out).write_bytes(b"".join(lines))
    counts = {
        k: sum(1 for line in lines if line.startswith(b'{"' + k.encode()))
        for k in ("ledger", "event", "leaf", "consistency")
    }
    print(
        f"wrote {args.out}: {counts['event']} events, {counts['ledger']} ledger entries, "
        f"{counts['leaf']} other leaves, {counts['consistency']} consistency proofs",
        file=sys.stderr,
    )
    for fork in anchors.forks:
        print(f"export-bundle: {fork.check}: chain {fork.chain}: {fork.detail}", file=sys.stderr)
    for chain, anchor in sorted(anchors.by_chain.items()):
        print(
            f"export-bundle: chain {chain}: checkpoint of size {anchor.checkpoint.size} cosigned "
            f"by {', '.join(anchor.witnesses)}",
            file=sys.stderr,
        )
    if not anchors.by_chain:
        print(
            "export-bundle: no checkpoint cosigned by a quorum of witnesses: the bundle is not "
            "anchored",
            file=sys.stderr,
        )
    return 0


async def _bundle_lines(
    settings: Settings, start: datetime, end: datetime, org: str | None
) -> tuple[list[bytes], Anchors]:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        anchors = await find_anchors(settings, conn)
        anchoring = BundleAnchors(anchor_policy(settings), anchors.by_chain)
        lines = [line async for line in export_bundle(conn, start, end, org, anchoring)]
        return lines, anchors
    finally:
        await conn.close()


def run_verify_bundle(settings: Settings, args: Any) -> int:
    """No database: the bundle, the HMAC keys if this auditor has them, the public key, and the
    witness keys the auditor trusts (else the bundle's, named for them to compare). Exit codes
    as verify's: 0 intact and anchored, 1 broken, 2 nothing verifiable, 3 not anchored."""
    try:
        verifier = verifier_for(
            settings.signing_keys_by_id,
            settings.ledger_keys_by_id,
            args.public_key or settings.ledger_public_key,
        )
        witnesses = parse_witness_keys(args.witnesses or "")
        quorum = args.quorum
        if not witnesses and settings.witnesses:  # the witnesses this auditor's setup trusts
            witnesses = tuple(w.key for w in parse_witnesses(settings.witnesses))
            quorum = quorum or settings.witness_quorum
    except (NoVerificationKey, ValueError) as exc:
        print(f"verify-bundle: {exc}", file=sys.stderr)
        return 2
    if quorum is not None and (quorum < 1 or (witnesses and quorum > len(witnesses))):
        bound = f"from 1 to {len(witnesses)}, the witnesses given" if witnesses else "1 or more"
        print(f"verify-bundle: --quorum must be {bound}", file=sys.stderr)
        return 2
    with Path(args.bundle).open("rb") as bundle:
        report = verify_bundle(bundle, verifier, witnesses, quorum)
    for finding in report.findings:
        print(orjson.dumps(finding.as_dict()).decode())
    print(orjson.dumps({**report.summary(), "checked": verifier.checked}).decode())
    _say_bundle_anchoring(report)
    if report.entries == 0 and not report.findings:
        print("verify-bundle: nothing to verify: the bundle has no ledger entries", file=sys.stderr)
        return 2
    return EXIT_CODES[report.verdict]


def _say_bundle_anchoring(report: BundleReport) -> None:
    for anchor in report.anchors or []:
        print(_anchored("verify-bundle", anchor), file=sys.stderr)
    trust = report.witness_keys
    if trust is not None:
        keys = ", ".join(k.vkey for k in trust.keys)
        if not keys:
            said = "the bundle names no witness keys"
        elif trust.source == PINNED_SOURCE:
            said = f"witness keys the auditor trusts: {keys} (quorum {trust.quorum})"
        else:
            said = (
                f"witness keys named by the bundle itself: {keys} (quorum {trust.quorum}); "
                "compare them with the witness keys you trust, or give those with --witnesses"
            )
        print(f"verify-bundle: {said}", file=sys.stderr)
    if report.verdict == NOT_ANCHORED and report.entries:
        runs = ", ".join(
            f"chain {r['chain']} seq {r['from_seq']}"
            + (f"..{r['to_seq']}" if r["to_seq"] != r["from_seq"] else "")
            for r in report.unanchored_entries
        )
        print(
            f"verify-bundle: NOT ANCHORED: {runs}: no checkpoint in the bundle cosigned by a "
            f"quorum of witnesses covers them; their verdict rests on the ledger's own "
            f"signatures alone (exit {NOT_ANCHORED_EXIT})",
            file=sys.stderr,
        )


def run_checkpoint_vkeys(settings: Settings) -> int:
    """The value of AUDIT_WITNESS_LOGS a witness of this log needs: each chain's origin and the
    note key (named by it) its checkpoints are signed with."""
    public = settings.ledger_public_key
    if not public and settings.ledger_private_key:
        public = PublicSigner(settings.ledger_private_key).public_key_b64
    if not public:
        print("checkpoint vkeys: set AUDIT_LEDGER_PUBLIC_KEY (or the private key)", file=sys.stderr)
        return 2
    pairs = [
        f"{origin_of(settings.log_origin, chain)}={key.vkey}"
        for chain in range(settings.stream_shards)
        for key in log_keys(settings.log_origin, chain, public)
    ]
    print(",".join(pairs))
    return 0


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
