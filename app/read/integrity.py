"""Tamper evidence for readers: what verification says of one event (its inclusion proof and
verdict), and a verification of a range of the ledger that reports as it runs. Both are reads of
the audit log, recorded in the reader's audit trail."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.db import driver_connection
from app.core.errors import ApiError, Conflict, InvalidEvents
from app.core.limits import Slot, Slots, TooManyVerifications
from app.ledger.anchor import Anchors, anchor_report
from app.ledger.proofs import DamagedBatch, EventVerdict, verify_event
from app.ledger.verify import Report, Verifier, chain_ids, verify_chains, verify_range
from app.ledger.verify_conn import times_as_text
from app.ledger.verify_guard import NoVerificationKey, RangeError, resolve_range, verifier_for
from app.queue.recorder import Recorder
from app.queue.trail import Reader, record_read
from app.store.partitions import summarize_batch_ranges

FindAnchors = Callable[[Settings, asyncpg.Connection], Awaitable[Anchors]]

# One line of a verification's report: ("progress" | "finding" | "summary" | "error", value).
ReportLine = tuple[str, Any]


class InvalidRange(ApiError):
    status_code = 422
    code = "invalid_range"


class VerificationUnavailable(ApiError):
    status_code = 503
    code = "verification_unavailable"


@dataclass(frozen=True, slots=True)
class Ranges:
    """What a verification covers: a seq range (of one chain), or a time range, or all."""

    from_seq: int | None = None
    to_seq: int | None = None
    chain: int | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """A verification under way: its report's lines as they come, sent in a stream that holds
    `slot` until it ends and gives up on a client that takes nothing for `send_timeout_s`."""

    lines: AsyncGenerator[ReportLine, None]
    slot: Slot
    send_timeout_s: float


class Integrity:
    def __init__(
        self,
        engine: AsyncEngine,
        long_reads: AsyncEngine,
        settings: Settings,
        recorder: Recorder,
        verifications: Slots,
        find_anchors: FindAnchors,
    ) -> None:
        self._engine = engine
        self._long_reads = long_reads  # verifications, apart from the short queries
        self._settings = settings
        self._recorder = recorder
        self._verifications = verifications
        self._find_anchors = find_anchors

    def _verifier(self, organization: str | None) -> Verifier:
        settings = self._settings
        return verifier_for(
            settings.signing_keys_by_id,
            settings.ledger_keys_by_id,
            settings.ledger_public_key,
            organization,
            settings.operations_org,
        )

    async def verdict(self, reader: Reader, event_id: uuid.UUID) -> EventVerdict | None:
        """What verification says of one event of the reader's (None: no such event),
        recorded as a read of its proof: the API's proof and the console's badge both come
        from here."""
        organization = reader.caller.organization_id
        try:
            verifier: Verifier | None = self._verifier(organization)
        except NoVerificationKey:  # the proof still goes out, for whoever holds the keys to check
            verifier = None
        async with driver_connection(self._engine) as conn, times_as_text(conn):
            try:
                verdict = await verify_event(conn, verifier, organization, event_id)
            except DamagedBatch as exc:
                raise Conflict(f"{exc}; run a verification") from exc
        sealed = verdict is not None and verdict.proof is not None
        await record_read(self._recorder, reader, "proof", {"event_id": str(event_id)}, int(sealed))
        return verdict

    async def verification(
        self, reader: Reader, asked: Ranges, *, whole_ledger: bool = False
    ) -> Verification:
        """Verify the reader's organization's events in the ledger (`whole_ledger`: every
        organization's, each finding named), over `asked`. The range is checked and one of the
        verification slots taken (TooManyVerifications) before the read is recorded."""
        if (asked.start is None) != (asked.end is None):
            raise InvalidEvents("give both start and end, or neither")
        seq_range = asked.from_seq is not None or asked.to_seq is not None
        if asked.start is not None and (seq_range or asked.chain is not None):
            raise InvalidEvents("give a seq range or a time range, not both")
        caller = reader.caller
        try:
            verifier = self._verifier(None if whole_ledger else caller.organization_id)
        except NoVerificationKey as exc:
            raise VerificationUnavailable(f"this service cannot verify: {exc}") from exc
        async with driver_connection(self._engine) as conn:
            try:
                await resolve_range(conn, asked.chain, asked.from_seq, asked.to_seq)
            except RangeError as exc:
                heads = {str(c): head for c, head in exc.heads.items()}
                raise InvalidRange(str(exc), details={"heads": heads}) from exc
        slot = self._verifications.acquire(
            caller.key_id, caller.organization_id, TooManyVerifications
        )
        try:
            query = {**asdict(asked), "whole_ledger": whole_ledger}
            await record_read(self._recorder, reader, "verify", query, 0)
        except BaseException:
            slot.release()
            raise
        chosen = seq_range or asked.chain is not None
        seqs = (asked.from_seq or 1, asked.to_seq, asked.chain) if chosen else None
        lines = self._report_lines(verifier, seqs, asked.start, asked.end)
        return Verification(lines, slot, self._settings.export_send_timeout_s)

    async def _report_lines(
        self,
        verifier: Verifier,
        seqs: tuple[int, int | None, int | None] | None,
        start: datetime | None,
        end: datetime | None,
    ) -> AsyncGenerator[ReportLine, None]:
        """Runs verification beside the answer, so progress reaches the reader as it
        happens: progress lines while it runs, one line per finding, then the summary."""
        lines: asyncio.Queue[ReportLine | None] = asyncio.Queue()
        settings = self._settings

        def progress(report: Report) -> None:
            lines.put_nowait(
                ("progress", {"ledger_entries": report.entries, "events": report.events})
            )

        async def run() -> None:
            try:
                async with driver_connection(self._long_reads) as conn, times_as_text(conn):
                    await summarize_batch_ranges(conn)
                    if seqs is None:
                        times = (start, end) if start is not None and end is not None else None
                        report = await verify_chains(conn, verifier, progress, times=times)
                    else:
                        first, last, chain = seqs
                        report = await verify_range(
                            conn, verifier, first, last, progress, chain=chain or 0
                        )
                    anchors = await self._find_anchors(settings, conn)
                    chains = await chain_ids(conn) if seqs is None else [seqs[2] or 0]
                    await anchor_report(
                        conn,
                        report,
                        anchors,
                        chains,
                        stale_after_s=settings.threshold_unwitnessed_s,
                    )
                for finding in report.findings:
                    lines.put_nowait(("finding", finding.as_dict()))
                lines.put_nowait(("summary", {**report.summary(), "checked": verifier.checked}))
            except Exception as exc:  # the answer has begun: say it in the report
                failure = {"code": "verification_failed", "message": type(exc).__name__}
                lines.put_nowait(("error", failure))
            finally:
                lines.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (line := await lines.get()) is not None:
                yield line
            await task
        finally:
            task.cancel()
