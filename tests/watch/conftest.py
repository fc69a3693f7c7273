"""Databases of their own for the watch's tests: the detector examines every chain of the database
it runs on, so each test that runs it gets a fresh, migrated one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from app.cli.migrate import migrate
from app.core.config import Settings
from tests.conftest import with_database

FreshDatabase = Callable[..., Awaitable[str]]


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[FreshDatabase]:
    """A factory of new databases migrated to `revision` (head by default), dropped after."""
    admin = await asyncpg.connect(database_url)
    made: list[str] = []

    async def make(revision: str = "head") -> str:
        name = f"audit_watch_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        url = with_database(database_url, name)
        await asyncio.to_thread(migrate, Settings(database_url=url, _env_file=None), revision)
        return url

    yield make
    for name in made:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()
