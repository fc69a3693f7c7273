"""Engine and connection factories. Nothing is built at import."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.config import Settings

WRITE_COMMAND_TIMEOUT_S = 120.0


def create_engine(
    settings: Settings,
    pool_size: int | None = None,
    overflow: int | None = None,
    command_timeout_s: float | None = 30,
) -> AsyncEngine:
    """A pooled engine: the settings' pool for queries, or a pool of its own (`pool_size`,
    `overflow`) for one kind of work."""
    size = settings.db_pool_size if pool_size is None else pool_size
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=size,
        max_overflow=size if overflow is None else overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=5,
        connect_args={"timeout": 5, "command_timeout": command_timeout_s},
    )


async def connect_raw(settings: Settings, *, connect_timeout_s: float = 10.0) -> asyncpg.Connection:
    """A dedicated asyncpg connection: the writer keeps one per task for COPY. A command that
    hangs (a half-open connection) fails after WRITE_COMMAND_TIMEOUT_S and is retried."""
    return await asyncpg.connect(
        settings.asyncpg_dsn, timeout=connect_timeout_s, command_timeout=WRITE_COMMAND_TIMEOUT_S
    )


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection as plain asyncpg, for the integrity code that speaks asyncpg."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        yield raw.driver_connection


@contextlib.asynccontextmanager
async def engine_scope(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine for one command-line job, disposed when it is done."""
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        await engine.dispose()
