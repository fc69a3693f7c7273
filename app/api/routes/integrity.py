"""Tamper evidence over HTTP: streaming verification and per-event inclusion proofs
(app.read.integrity)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from app.api.errors import error_responses
from app.core.errors import NotFound
from app.events.fields import EventTime
from app.http.auth import AuditorDep, OperatorDep, ReaderDep
from app.http.deps import IntegrityDep
from app.http.event_data import EventDataRoute
from app.http.guarded_stream import GuardedStream
from app.read.integrity import Ranges, ReportLine, Verification

router = APIRouter(tags=["integrity"], route_class=EventDataRoute)

ERRORS = error_responses(401, 403, 404, 409, 422, 429, 503)

SeqParam = Annotated[int | None, Query(ge=1, le=2**62)]

ChainParam = Annotated[
    int | None, Query(ge=0, le=1023, description="the chain a seq range is of (default 0)")
]

TimeParam = Annotated[EventTime | None, Query()]

VERIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/x-ndjson": {}}},
    **ERRORS,
}


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
async def verify(reader: AuditorDep, integrity: IntegrityDep, asked: Asked) -> StreamingResponse:
    """Streams `{"progress": ...}` lines while it runs, one `{"finding": ...}` line per thing
    that broke, and a final `{"summary": ...}`. Your organization's events are checked and
    counted; another organization's events in shared batches only lend their stored hashes to
    the Merkle roots and are never named; the chain itself (links, heads, signatures) is checked
    whole. Without a seq range every chain (one per stream shard) is verified; a seq range is of
    one chain."""
    return _ndjson(await integrity.verification(reader, asked))


@router.get(
    "/operator/integrity/verify",
    response_class=StreamingResponse,
    responses=VERIFY_RESPONSES,
    summary="Verify the whole ledger, every tenant's events (operator scope)",
)
async def verify_all(
    reader: OperatorDep, integrity: IntegrityDep, asked: Asked
) -> StreamingResponse:
    """As /integrity/verify, over every organization's events, each finding named."""
    return _ndjson(await integrity.verification(reader, asked, whole_ledger=True))


def _ndjson(verification: Verification) -> GuardedStream:
    return GuardedStream(
        _lines(verification.lines),
        slot=verification.slot,
        send_timeout_s=verification.send_timeout_s,
        media_type="application/x-ndjson",
    )


async def _lines(report: AsyncGenerator[ReportLine, None]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(report):  # an answer that ends early stops verifying now
        async for kind, value in report:
            yield orjson.dumps({kind: value}) + b"\n"


@router.get("/events/{event_id}/proof", responses=ERRORS, summary="Inclusion proof of an event")
async def proof(reader: ReaderDep, integrity: IntegrityDep, event_id: uuid.UUID) -> dict[str, Any]:
    """The event's inclusion proof, and `verification`: what verifying this one event finds
    (`verified`, and `problems` in words: a field changed since sealing, an invalid signature,
    a proof that does not lead to a signed ledger entry), as GET /integrity/verify would. A
    service without verification keys gives the proof alone: `verification` null and
    `verification_unavailable` saying why."""
    verdict = await integrity.verdict(reader, event_id)
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
