"""Console sessions: a random id in a secure, HttpOnly, SameSite=Strict cookie, the session in
Redis under the id's hash (the key's hash, its organization, a CSRF token), for
AUDIT_CONSOLE_SESSION_S. The API key itself is never stored; every page checks it again, so a
revoked key signs its sessions out within the key cache's time."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import orjson
import redis.asyncio as redis

from app.core.config import Settings

COOKIE = "audit_console"
LOGIN_COOKIE = "audit_console_login"  # the sign-in form's CSRF token (double submit)


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    key_hash: bytes
    key_id: str
    organization_id: str
    csrf: str


def _key(settings: Settings, sid: str) -> str:
    digest = hashlib.sha256(sid.encode()).hexdigest()
    return f"{{{settings.stream_prefix}}}:console:{digest}"


async def create(
    client: redis.Redis, settings: Settings, key_hash: bytes, key_id: str, organization: str
) -> Session:
    session = Session(
        secrets.token_urlsafe(32), key_hash, key_id, organization, secrets.token_urlsafe(32)
    )
    value = orjson.dumps(
        {"key_hash": key_hash.hex(), "key_id": key_id, "org": organization, "csrf": session.csrf}
    )
    await client.set(_key(settings, session.sid), value, ex=settings.console_session_s)
    return session


async def load(client: redis.Redis, settings: Settings, sid: str | None) -> Session | None:
    if not sid or len(sid) > 128:
        return None
    raw = await client.get(_key(settings, sid))
    if raw is None:
        return None
    value = orjson.loads(raw)
    return Session(
        sid, bytes.fromhex(value["key_hash"]), value["key_id"], value["org"], value["csrf"]
    )


async def delete(client: redis.Redis, settings: Settings, sid: str) -> None:
    await client.delete(_key(settings, sid))


def cookie(name: str, value: str, settings: Settings, *, max_age: int | None = None) -> str:
    parts = [f"{name}={value}", "Path=/console", "HttpOnly", "SameSite=Strict"]
    if settings.console_secure_cookie:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)
