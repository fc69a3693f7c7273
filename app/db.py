"""Engine and connection factories. Nothing is built at import."""

from __future__ import annotations

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


async def connect_raw(settings: Settings, *, connect_timeout_s: float = 10.0) -> asyncpg.Connection:
    """A dedicated asyncpg connection: the writer keeps one per task for COPY."""
    return await asyncpg.connect(settings.asyncpg_dsn, timeout=connect_timeout_s)
