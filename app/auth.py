"""API keys: bearer tokens bound to one organization with scopes; stored only as SHA-256."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app import repository
from app.errors import Forbidden, Unauthenticated
from app.main_state import resources
from app.schemas import ALL_SCOPES

KEY_PREFIX = "aik_"
CACHE_LIMIT = 10_000
STALE_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    organization_id: str
    scopes: frozenset[str]


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    # Keys carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).digest()


def parse_scopes(raw: str) -> list[str]:
    scopes = sorted({s.strip() for s in raw.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a comma list of {', '.join(ALL_SCOPES)}")
    return scopes


async def create_api_key(
    engine: AsyncEngine, organization_id: str, scopes: list[str], name: str
) -> tuple[str, str]:
    """Store a new key's hash; returns (key id, the key itself, shown once)."""
    if not organization_id.strip():
        raise ValueError("organization must not be empty")
    key = new_api_key()
    async with engine.begin() as conn:
        key_id = await repository.insert_api_key(
            conn,
            organization_id=organization_id,
            name=name,
            scopes=scopes,
            key_hash=hash_api_key(key),
            key_prefix=key[: len(KEY_PREFIX) + 6],
        )
    return str(key_id), key


Lookup = Callable[[bytes], Awaitable[Caller | None]]  # None: unknown or revoked


class KeyCache:
    """Verified keys for `ttl` seconds, so a hot client costs no database round trip.

    A revoked key stops working within `ttl` seconds of its last lookup's start. A key in use is
    looked up again in the background once half its time is past, while the cached answer still
    serves; a key not cached (or past its time) is looked up once however many requests present
    it at that moment, the others waiting for that one answer. (Each request used to make its own
    lookup whenever the entry ran out: a burst of connections and queries every `ttl` seconds,
    which every request of those milliseconds waited for.) While the database cannot be asked, a
    key verified in the last STALE_SECONDS still works, so ingest goes on through an outage."""

    def __init__(self, ttl: float, lookup: Lookup) -> None:
        self.ttl = ttl
        self._lookup_key = lookup
        self._entries: dict[bytes, tuple[float, Caller]] = {}  # verified at (monotonic), caller
        self._lookups: dict[bytes, asyncio.Task[Caller | None]] = {}

    def get(self, key_hash: bytes, *, stale: bool = False) -> Caller | None:
        hit = self._entries.get(key_hash)
        if hit is None:
            return None
        limit = self.ttl + (STALE_SECONDS if stale else 0)
        return hit[1] if time.monotonic() - hit[0] <= limit else None

    async def verify(self, key_hash: bytes) -> Caller | None:
        """The key's caller, from the cache or from the lookup (shared by whoever asks while it
        runs); raises what the lookup raised."""
        if self.ttl <= 0:  # no caching: every request asks the database itself
            return await self._lookup_key(key_hash)
        hit = self._entries.get(key_hash)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age <= self.ttl:
                if age > self.ttl / 2 and key_hash not in self._lookups:
                    self._start(key_hash)  # refresh ahead; a failure leaves the entry
                return hit[1]
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
        else:
            if len(self._entries) >= CACHE_LIMIT:
                self._entries.clear()
            self._entries[key_hash] = (started, caller)
        return caller

    def _finished(self, key_hash: bytes, task: asyncio.Task[Caller | None]) -> None:
        if self._lookups.get(key_hash) is task:
            del self._lookups[key_hash]
        if not task.cancelled():
            task.exception()  # a background refresh's failure is not an error of its own


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("missing Authorization: Bearer <api key>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization must be 'Bearer <api key>'")
    return token.strip()


def key_lookup(engine: AsyncEngine) -> Lookup:
    """The lookup of active keys in `engine`'s database, for a KeyCache."""

    async def active_key(key_hash: bytes) -> Caller | None:
        async with engine.connect() as conn:
            record = await repository.active_key_by_hash(conn, key_hash)
        if record is None:
            return None
        return Caller(str(record.id), record.organization_id, frozenset(record.scopes))

    return active_key


async def authenticate(request: Request) -> Caller:
    token = _bearer(request)
    key_hash = hash_api_key(token)
    state = resources(request)
    try:
        caller = await state.key_cache.verify(key_hash)
    except (OSError, sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError):
        stale = state.key_cache.get(key_hash, stale=True)
        if stale is None:
            raise
        return stale
    if caller is None:
        raise Unauthenticated("unknown or revoked API key")
    return caller


async def authorize(request: Request, scope: str) -> Caller:
    """The caller of this request, who must hold `scope`."""
    caller = await authenticate(request)
    if scope not in caller.scopes:
        raise Forbidden(f"this API key lacks the '{scope}' scope")
    return caller


def require_scope(scope: str) -> Callable[[Request], Coroutine[Any, Any, Caller]]:
    async def dependency(request: Request) -> Caller:
        return await authorize(request, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison for shared tokens (the optional /metrics token)."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
