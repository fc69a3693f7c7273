"""Tamper evidence over HTTP: streaming verification and per-event inclusion proofs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from app.api.errors import error_responses
from app.api.read_audit import record_access
from app.core.caller import Caller
from app.core.config import Settings
from app.core.db import driver_connection
from app.core.errors import ApiError, Conflict, InvalidEvents, NotFound
from app.core.limits import TooManyVerifications
from app.events.fields import EventTime
from app.http.auth import require_scope
from app.http.deps import resources
from app.http.event_data import EventDataRoute
from app.http.guarded_stream import GuardedStream
from app.ledger.anchor import anchor_report
from app.ledger.proofs import DamagedBatch, EventVerdict, verify_event
from app.ledger.verify import Report, Verifier, chain_ids, verify_chains, verify_range
from app.ledger.verify_guard import NoVerificationKey, RangeError, resolve_range, verifier_for
from app.store.partitions import summarize_batch_ranges
from app.witness.anchors import find_anchors

router = APIRouter(tags=["integrity"], route_class=EventDataRoute)

Auditor = Annotated[Caller, Depends(require_scope("verify"))]

Operator = Annotated[Caller, Depends(require_scope("operator"))]

Reader = Annotated[Caller, Depends(require_scope("read"))]

ERRORS = error_responses(401, 403, 404, 409, 422, 429, 503)

SeqParam = Annotated[int | None, Query(ge=1, le=2**62)]

ChainParam = Annotated[
    int | None, Query(ge=0, le=1023, description="the chain a seq range is of (default 0)")
]

TimeParam = Annotated[EventTime | None, Query()]


class InvalidRange(ApiError):
    status_code = 422
    code = "invalid_range"


class VerificationUnavailable(ApiError):
    status_code = 503
    code = "verification_unavailable"


def _line(kind: str, value: Any) -> bytes:
    return orjson.dumps({kind: value}) + b"\n"


VERIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/x-ndjson": {}}},
    **ERRORS,
}


@dataclass(frozen=True, slots=True)
class Ranges:
    from_seq: int | None
    to_seq: int | None
    chain: int | None
    start: datetime | None
    end: datetime | None


def ranges_asked(
    from_seq: SeqParam = None,
    to_seq: SeqParam = None,
    chain: ChainParam = None,
    start: TimeParam = None,
    end: TimeParam = None,
) -> Ranges:
    """The query parameters of a verification: a seq range (of one chain) or a time range."""
    return Ranges(from_seq, to_seq, chain, start, end)


Asked = Annotated[Ranges, Depends(ranges_asked)]


@router.get(
    "/integrity/verify",
    response_class=StreamingResponse,
    responses=VERIFY_RESPONSES,
    summary="Verify your organization's events in the ledger (NDJSON stream)",
)
async def verify(request: Request, caller: Auditor, asked: Asked) -> StreamingResponse:
    """Streams `{"progress": ...}` lines while it runs, one `{"finding": ...}` line per thing
    that broke, and a final `{"summary": ...}`. Your organization's events are checked and
    counted; another organization's events in shared batches only lend their stored hashes to
    the Merkle roots and are never named; the chain itself (links, heads, signatures) is checked
    whole. Without a seq range every chain (one per stream shard) is verified; a seq range is of
    one chain."""
    return await _verification(request, caller, asked, caller.organization_id)


@router.get(
    "/operator/integrity/verify",
    response_class=StreamingResponse,
    responses=VERIFY_RESPONSES,
    summary="Verify the whole ledger, every tenant's events (operator scope)",
)
async def verify_all(request: Request, caller: Operator, asked: Asked) -> StreamingResponse:
    """As /integrity/verify, over every organization's events, each finding named."""
    return await _verification(request, caller, asked, None)


async def _verification(
    request: Request, caller: Caller, asked: Ranges, organization: str | None
) -> StreamingResponse:
    if (asked.start is None) != (asked.end is None):
        raise InvalidEvents("give both start and end, or neither")
    seq_range = asked.from_seq is not None or asked.to_seq is not None
    if asked.start is not None and (seq_range or asked.chain is not None):
        raise InvalidEvents("give a seq range or a time range, not both")
    res = resources(request)
    settings = res.settings
    try:
        verifier = verifier_for(
            settings.signing_keys_by_id,
            settings.ledger_keys_by_id,
            settings.ledger_public_key,
            organization,
            settings.operations_org,
        )
    except NoVerificationKey as exc:
        raise VerificationUnavailable(f"this service cannot verify: {exc}") from exc
    async with driver_connection(res.engine) as conn:
        try:
            await resolve_range(conn, asked.chain, asked.from_seq, asked.to_seq)
        except RangeError as exc:
            heads = {str(c): head for c, head in exc.heads.items()}
            raise InvalidRange(str(exc), details={"heads": heads}) from exc
    slot = res.verifications.acquire(caller.key_id, caller.organization_id, TooManyVerifications)
    try:
        query = {**asdict(asked), "whole_ledger": organization is None}
        await record_access(request, caller, "verify", query, 0)
    except BaseException:
        slot.release()
        raise
    chosen = seq_range or asked.chain is not None
    seqs = (asked.from_seq or 1, asked.to_seq, asked.chain) if chosen else None
    return GuardedStream(
        _verify_lines(res.long_reads, settings, verifier, seqs, asked.start, asked.end),
        slot=slot,
        send_timeout_s=settings.export_send_timeout_s,
        media_type="application/x-ndjson",
    )


async def _verify_lines(
    engine: Any,
    settings: Settings,
    verifier: Verifier,
    seqs: tuple[int, int | None, int | None] | None,
    start: Any,
    end: Any,
) -> AsyncIterator[bytes]:
    """Runs verification beside the response, so progress reaches the client as it happens."""
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def progress(report: Report) -> None:
        lines.put_nowait(
            _line("progress", {"ledger_entries": report.entries, "events": report.events})
        )

    async def run() -> None:
        try:
            async with driver_connection(engine) as conn:
                await summarize_batch_ranges(conn)
                if seqs is None:
                    times = (start, end) if start is not None else None
                    report = await verify_chains(conn, verifier, progress, times=times)
                else:
                    first, last, chain = seqs
                    report = await verify_range(
                        conn, verifier, first, last, progress, chain=chain or 0
                    )
                anchors = await find_anchors(settings, conn)
                chains = await chain_ids(conn) if seqs is None else [seqs[2] or 0]
                await anchor_report(
                    conn, report, anchors, chains, stale_after_s=settings.threshold_unwitnessed_s
                )
            for finding in report.findings:
                lines.put_nowait(_line("finding", finding.as_dict()))
            lines.put_nowait(_line("summary", {**report.summary(), "checked": verifier.checked}))
        except Exception as exc:  # the status line is sent already: say it in the stream
            failure = {"code": "verification_failed", "message": type(exc).__name__}
            lines.put_nowait(_line("error", failure))
        finally:
            lines.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        while (line := await lines.get()) is not None:
            yield line
        await task
    finally:
        task.cancel()


@router.get("/events/{event_id}/proof", responses=ERRORS, summary="Inclusion proof of an event")
async def proof(request: Request, caller: Reader, event_id: uuid.UUID) -> dict[str, Any]:
    """The event's inclusion proof, and `verification`: what verifying this one event finds
    (`verified`, and `problems` in words: a field changed since sealing, an invalid signature,
    a proof that does not lead to a signed ledger entry), as GET /integrity/verify would. A
    service without verification keys gives the proof alone: `verification` null and
    `verification_unavailable` saying why."""
    verdict = await event_verdict(request, caller, event_id)
    if verdict is None or verdict.proof is None:
        raise NotFound("no such sealed event in your organization")
    if verdict.unchecked:
        return {
            **verdict.proof,
            "verification": None,
            "verification_unavailable": verdict.unchecked,
        }
    checked = {"verified": verdict.verified, "problems": verdict.problems}
    return {**verdict.proof, "verification": checked, "verification_unavailable": None}


async def event_verdict(
    request: Request, caller: Caller, event_id: uuid.UUID
) -> EventVerdict | None:
    """What verification says of one event of the caller's (None: no such event), recorded as
    a read of its proof: the API's proof and the console's badge both come from here."""
    res = resources(request)
    settings = res.settings
    try:
        verifier: Verifier | None = verifier_for(
            settings.signing_keys_by_id,
            settings.ledger_keys_by_id,
            settings.ledger_public_key,
            caller.organization_id,
            settings.operations_org,
        )
    except NoVerificationKey:  # the proof still goes out, for whoever holds the keys to check
        verifier = None
    async with driver_connection(res.engine) as conn:
        try:
            verdict = await verify_event(conn, verifier, caller.organization_id, event_id)
        except DamagedBatch as exc:
            raise Conflict(f"{exc}; run a verification") from exc
    sealed = verdict is not None and verdict.proof is not None
    await record_access(request, caller, "proof", {"event_id": str(event_id)}, int(sealed))
    return verdict
