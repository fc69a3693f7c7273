"""Monthly partitions of audit_log, made ahead of time, and the upkeep of their batch index."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:  # verification imports this module and needs no SQLAlchemy
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)
SUMMARIZE = "SELECT audit_summarize_batch_ranges()"


async def ensure_partitions(engine: AsyncEngine, months_ahead: int) -> int:
    """Create the monthly partitions from this month through `months_ahead`; returns how many."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        created = await conn.scalar(
            text("SELECT audit_ensure_partitions(:ahead)"), {"ahead": months_ahead}
        )
    return int(created or 0)


async def summarize_batch_ranges(conn: asyncpg.Connection) -> int | None:
    """Summarize the batch index's new ranges, so each read of a few batches reads their pages
    only, not every page written since autovacuum last summarized (with autovacuum off or
    behind, every fetch of a pass would read the partition's whole new part). The number of
    ranges summarized; None when the database refused (no rights, a standby): verification
    then reads more, and finds the same."""
    try:
        async with conn.transaction():
            return int(await conn.fetchval(SUMMARIZE))
    except asyncpg.PostgresError as exc:
        log.warning("batch index not summarized: %s", type(exc).__name__)
        return None
