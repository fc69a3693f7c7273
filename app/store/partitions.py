"""Monthly partitions of audit_log, made ahead of time, and the upkeep of their batch index."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def ensure_partitions(engine: AsyncEngine, months_ahead: int) -> int:
    """Create the monthly partitions from this month through `months_ahead`; returns how many."""
    async with engine.begin() as conn:
        created = await conn.scalar(
            text("SELECT audit_ensure_partitions(:ahead)"), {"ahead": months_ahead}
        )
    return int(created or 0)


async def summarize_batch_ranges(engine: AsyncEngine) -> int:
    """Summarize the batch index's new ranges (migration 0008); returns how many."""
    async with engine.begin() as conn:
        summarized = await conn.scalar(text("SELECT audit_summarize_batch_ranges()"))
    return int(summarized or 0)
