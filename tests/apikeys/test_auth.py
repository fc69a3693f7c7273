"""The verified-key cache (app.apikeys.cache.KeyCache): one lookup per key at a time, refreshed
ahead of its time, revocations seen within it, the database's failures survived with the last
answer."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import sqlalchemy.exc

from app.apikeys.cache import KeyCache, is_outage, key_lookup
from app.core.caller import Caller
from app.core.config import Settings
from app.core.db import create_engine
from app.core.service_macs import ServiceMacs

KEY = b"k" * 32
CALLER = Caller("key-1", "org-1", frozenset({"ingest"}))


class Directory:
    """What the database would answer about KEY, with a count of the lookups made."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer: Caller | None = CALLER
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def lookup(self, key_hash: bytes) -> Caller | None:
        assert key_hash == KEY
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return self.answer


async def test_many_requests_at_once_make_one_lookup() -> None:
    directory = Directory()
    cache = KeyCache(10, directory.lookup)
    directory.gate = asyncio.Event()
    waiting = [asyncio.create_task(cache.verify(KEY)) for _ in range(50)]
    await asyncio.sleep(0.01)
    directory.gate.set()
    assert await asyncio.gather(*waiting) == [CALLER] * 50
    assert directory.calls == 1
    assert await cache.verify(KEY) == CALLER
    assert directory.calls == 1  # cached


async def test_past_half_its_time_a_key_is_refreshed_once_in_the_background() -> None:
    directory = Directory()
    cache = KeyCache(1.0, directory.lookup)
    assert await cache.verify(KEY) == CALLER
    await asyncio.sleep(0.6)
    directory.gate = asyncio.Event()  # the refresh is slow: requests do not wait for it
    answers = [await cache.verify(KEY) for _ in range(20)]
    assert answers == [CALLER] * 20
    await asyncio.sleep(0.01)  # the refresh task starts
    assert directory.calls == 2
    directory.answer = None  # revoked meanwhile: the refresh's answer drops the entry
    directory.gate.set()
    await asyncio.sleep(0.01)
    assert await cache.verify(KEY) is None
    assert directory.calls == 2  # now known revoked: no lookup for a while


async def test_a_failed_refresh_keeps_the_entry_until_its_time_then_raises() -> None:
    directory = Directory()
    cache = KeyCache(1.0, directory.lookup)
    assert await cache.verify(KEY) == CALLER
    await asyncio.sleep(0.6)
    directory.failure = OSError("database unreachable")
    assert await cache.verify(KEY) == CALLER  # served; refresh fails apart
    await asyncio.sleep(0.5)
    with pytest.raises(OSError):
        await cache.verify(KEY)
    assert cache.usable_while_down(KEY) == CALLER  # what authenticate falls back on


async def test_an_outage_keeps_a_key_only_within_the_grace() -> None:
    directory = Directory()
    cache = KeyCache(0.2, directory.lookup, outage_grace=0.3)
    assert await cache.verify(KEY) == CALLER
    directory.failure = OSError("database unreachable")
    await asyncio.sleep(0.3)
    assert cache.usable_while_down(KEY) == CALLER
    await asyncio.sleep(0.3)  # past ttl + grace: no more
    assert cache.usable_while_down(KEY) is None


def test_only_an_unreachable_database_is_an_outage() -> None:
    try:
        raise sqlalchemy.exc.OperationalError("SELECT", {}, ConnectionRefusedError(111, "no"))
    except sqlalchemy.exc.OperationalError as refused:
        assert is_outage(refused)
    assert is_outage(ConnectionResetError())
    # A pool with no free connection in time, or a failing query, says nothing of revocation.
    assert not is_outage(sqlalchemy.exc.TimeoutError("QueuePool limit reached"))
    assert not is_outage(sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("syntax")))


async def test_unknown_keys_are_remembered_briefly() -> None:
    directory = Directory()
    directory.answer = None
    cache = KeyCache(10, directory.lookup, negative_ttl=0.2)
    assert [await cache.verify(KEY) for _ in range(5)] == [None] * 5
    assert directory.calls == 1
    directory.answer = CALLER  # created meanwhile: found once the negative entry is old
    await asyncio.sleep(0.25)
    assert await cache.verify(KEY) == CALLER
    assert directory.calls == 2


async def test_a_cancelled_request_leaves_the_lookup_to_the_others() -> None:
    directory = Directory()
    cache = KeyCache(10, directory.lookup)
    directory.gate = asyncio.Event()
    first = asyncio.create_task(cache.verify(KEY))
    second = asyncio.create_task(cache.verify(KEY))
    await asyncio.sleep(0.01)
    first.cancel()
    directory.gate.set()
    assert await second == CALLER
    assert first.cancelled() and directory.calls == 1


async def test_without_caching_every_request_asks() -> None:
    directory = Directory()
    cache = KeyCache(0, directory.lookup)
    for _ in range(3):
        assert await cache.verify(KEY) == CALLER
    assert directory.calls == 3


async def test_a_lookup_that_times_out_is_no_outage(settings: Settings, database_url: str) -> None:
    """A database that answers slowly (locks, load) must not let a revoked key live on."""
    engine = create_engine(settings, pool_size=1, overflow=0, command_timeout_s=0.5)
    lookup = key_lookup(engine, ServiceMacs.of(settings.service_key_ring).api_keys)
    locker = await asyncpg.connect(database_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(Exception) as caught:
                await lookup(KEY)
        assert not is_outage(caught.value)
    finally:
        await locker.close()
        await engine.dispose()
    assert is_outage(TimeoutError())  # a connection attempt that timed out still is one
