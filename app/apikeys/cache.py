"""Key lookups with a bounded cache: revocation takes effect within the cache's
lifetime, a stale key is used only during a database outage, unknown keys are
remembered briefly."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import sqlalchemy.exc
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from app.apikeys.keys import row_vouched
from app.core.caller import Caller
from app.core.errors import Unavailable
from app.core.service_macs import ServiceMac
from app.store import keyrows

log = logging.getLogger(__name__)

CACHE_LIMIT = 10_000

Lookup = Callable[[bytes], Awaitable[Caller | None]]  # None: unknown or revoked


class KeyCache:
    """Verified keys for `ttl` seconds, so a hot client costs no database round trip.

    A revoked key stops working within `ttl` seconds of its last lookup's start. A key in use is
    looked up again in the background once half its time is past, while the cached answer still
    serves; a key not cached (or past its time) is looked up once however many requests present
    it at that moment, the others waiting for that one answer. An unknown (or revoked) key is
    remembered as such for `negative_ttl` seconds, so a flood of bad keys costs no lookups.

    While the database cannot be reached (`usable_while_down`), a key verified in the last
    `outage_grace` seconds still works, so ingest goes on through an outage. Only an outage
    counts: a lookup that failed for any other reason (a pool wait, a query error) never serves
    a cached answer past its time, so it cannot stretch a revoked key's life."""

    def __init__(
        self, ttl: float, lookup: Lookup, *, outage_grace: float = 120.0, negative_ttl: float = 2.0
    ) -> None:
        self.ttl = ttl
        self.outage_grace = outage_grace
        self.negative_ttl = negative_ttl
        self._lookup_key = lookup
        self._entries: dict[bytes, tuple[float, Caller]] = {}  # verified at (monotonic), caller
        self._unknown: dict[bytes, float] = {}  # found unknown at (monotonic)
        self._lookups: dict[bytes, asyncio.Task[Caller | None]] = {}

    def usable_while_down(self, key_hash: bytes) -> Caller | None:
        """The caller of a key verified within `outage_grace`, for while the database is down."""
        hit = self._entries.get(key_hash)
        if hit is None or time.monotonic() - hit[0] > self.ttl + self.outage_grace:
            return None
        return hit[1]

    async def verify(self, key_hash: bytes) -> Caller | None:
        """The key's caller, from the cache or from the lookup (shared by whoever asks while it
        runs); None for an unknown or revoked key; raises what the lookup raised."""
        if self.ttl <= 0:  # no caching: every request asks the database itself
            return await self._lookup_key(key_hash)
        hit = self._entries.get(key_hash)
        now = time.monotonic()
        if hit is not None:
            age = now - hit[0]
            if age <= self.ttl:
                if age > self.ttl / 2 and key_hash not in self._lookups:
                    self._start(key_hash)  # refresh ahead; a failure leaves the entry
                return hit[1]
        elif now - self._unknown.get(key_hash, -math.inf) <= self.negative_ttl:
            return None
        task = self._lookups.get(key_hash) or self._start(key_hash)
        return await asyncio.shield(task)  # a waiter's cancellation leaves the lookup running

    def _start(self, key_hash: bytes) -> asyncio.Task[Caller | None]:
        task = asyncio.get_running_loop().create_task(self._lookup(key_hash))
        self._lookups[key_hash] = task
        task.add_done_callback(functools.partial(self._finished, key_hash))
        return task

    async def _lookup(self, key_hash: bytes) -> Caller | None:
        started = time.monotonic()
        caller = await self._lookup_key(key_hash)
        if caller is None:
            self._entries.pop(key_hash, None)
            if len(self._unknown) >= CACHE_LIMIT:
                self._unknown.clear()
            self._unknown[key_hash] = started
        else:
            if len(self._entries) >= CACHE_LIMIT:
                self._entries.clear()
            self._entries[key_hash] = (started, caller)
            self._unknown.pop(key_hash, None)
        return caller

    def _finished(self, key_hash: bytes, task: asyncio.Task[Caller | None]) -> None:
        if self._lookups.get(key_hash) is task:
            del self._lookups[key_hash]
        if not task.cancelled():
            task.exception()  # a background refresh's failure is not an error of its own


# The database cannot be reached at all (refused, reset, timed out connecting): the only
# failures that let a recently verified key keep working.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)


class SlowLookup(Unavailable):
    """The database took too long to answer a key lookup: not an outage (no cached answer
    serves past its time). Whoever asked is answered 503 with Retry-After, as for any backing
    service that cannot answer now (an ApiError: every path that authenticates answers it)."""

    def __init__(self) -> None:
        message = "the API key could not be checked in time; retry later"
        super().__init__(message, headers={"Retry-After": "1"})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and the contexts it did not suppress."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and isinstance(seen.orig, BaseException):
            yield from _chain(seen.orig)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)


def _timed_out(exc: BaseException) -> bool:
    return any(isinstance(e, TimeoutError) for e in _chain(exc))


def is_outage(exc: BaseException) -> bool:
    """Whether a lookup failed because the database is unreachable (sqlalchemy wraps the
    driver's error; a pool that had no free connection in time, or a lookup that timed out
    once connected, is no outage)."""
    for seen in _chain(exc):
        if isinstance(seen, SlowLookup):
            return False
        if isinstance(seen, OUTAGE_ERRORS):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
    return False


def key_lookup(engine: AsyncEngine, row_mac: ServiceMac, refused: Counter | None = None) -> Lookup:
    """The lookup of active keys in `engine`'s database, for a KeyCache. A row whose MAC does
    not check is no key: it is logged (by id, never the key) and counted in `refused`."""

    async def active_key(key_hash: bytes) -> Caller | None:
        async with engine.connect() as conn:  # failing to connect: an outage
            try:
                record = await keyrows.active_key_by_hash(conn, key_hash)
            except Exception as exc:
                if _timed_out(exc):  # a database that answers slowly is no outage
                    raise SlowLookup() from None
                raise
        if record is None:
            return None
        if not row_vouched(record, row_mac):
            log.warning("api key row %s refused: its MAC does not check", record.id)
            if refused is not None:
                refused.inc()
            return None
        return Caller(str(record.id), record.organization_id, frozenset(record.scopes))

    return active_key
