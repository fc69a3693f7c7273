"""Verification of every chain in several processes: each chain's seq range is cut into
contiguous parts, each part is verified with its own connection (checking its link to the part
before, and knowing the key retirements its chain's log recorded in the parts before:
app.ledger.verify.retirements_before), and the rows no ledger entry covers are found once, by
the database, at the end."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import asyncpg

from app.ledger.sql import NEWEST_SEQ, ORPHANS
from app.ledger.verify import (
    Finding,
    Report,
    Verifier,
    chain_ids,
    verify_range,
)
from app.ledger.verify_conn import read_times_as_text

MIN_ENTRIES_PER_JOB = 50


def _part(dsn: str, verifier: Verifier, chain: int, first: int, last: int) -> dict[str, Any]:
    """One part in its own process, with the very verifier of the whole run (the same keys and
    the same checks as a run in one process)."""

    async def run() -> dict[str, Any]:
        conn = await asyncpg.connect(dsn)
        try:
            await read_times_as_text(conn)
            report = await verify_range(conn, verifier, first, last, chain=chain)
        finally:
            await conn.close()
        return {
            "findings": [f.as_dict() for f in report.findings],
            "entries": report.entries,
            "events": report.events,
            "pruned_events": report.pruned_events,
            "pruned_ranges": report.pruned_ranges,
        }

    return asyncio.run(run())


def split(
    first: int, last: int, jobs: int, min_per_job: int = MIN_ENTRIES_PER_JOB
) -> list[tuple[int, int]]:
    """Contiguous seq ranges, about equal, covering first..last."""
    jobs = max(1, min(jobs, (last - first + 1) // min_per_job or 1))
    size = (last - first + 1 + jobs - 1) // jobs
    return [(a, min(last, a + size - 1)) for a in range(first, last + 1, size)]


async def verify_whole_chain(
    conn: asyncpg.Connection,
    dsn: str,
    verifier: Verifier,
    jobs: int,
    min_per_job: int = MIN_ENTRIES_PER_JOB,
) -> Report:
    chains = await chain_ids(conn)
    share = max(1, jobs // len(chains))  # jobs per chain
    parts: list[tuple[int, int, int]] = []
    report = Report(1, 0)
    for chain in chains:
        newest = await conn.fetchval(NEWEST_SEQ, chain) or 0
        report.to_seq = max(report.to_seq, newest)
        parts += [
            (chain, a, b) for a, b in (split(1, newest, share, min_per_job) if newest else [])
        ]
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(jobs, len(parts)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        results = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _part, dsn, verifier, chain, a, b)
                for chain, a, b in parts
            )
        )
    seen: set[tuple[str, str | None]] = set()
    for n, result in enumerate(results):
        report.entries += result["entries"]
        report.events += result["events"]
        report.pruned_events += result["pruned_events"]
        report.pruned_ranges = result["pruned_ranges"]
        for found in result["findings"]:
            finding = Finding(**found)
            if n and finding.check == "prune_record_invalid" and finding.seq is None:
                continue  # every part reads the same prune records: say it once
            if finding.check == "event_unsealed":
                seen.add((finding.check, finding.event_id))
            report.findings.append(finding)
    for row in await conn.fetch(ORPHANS):
        finding = verifier.event_finding("event_unsealed", row, None, "no known batch")
        if (finding.check, finding.event_id) not in seen:
            report.findings.append(finding)
    return report
