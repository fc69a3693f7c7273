"""Alembic environment: async engine on asyncpg; the URL comes from the caller or Settings."""

from __future__ import annotations

import asyncio

from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from app.core.config import Settings
from app.store.models import metadata

config = context.config


def _database_url() -> str:
    url = config.attributes.get("sqlalchemy_url")
    if isinstance(url, str) and url:
        return url
    settings = Settings()
    if not settings.database_url:
        raise SystemExit("AUDIT_DATABASE_URL is not set")
    return settings.sqlalchemy_url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
asyncio.run(_run_async())
