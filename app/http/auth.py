"""Bearer authentication: the API key of a request, its organization and its scopes."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from app.apikeys.cache import KeyCache, is_outage
from app.apikeys.keys import hash_api_key
from app.core.caller import Caller
from app.core.errors import Forbidden, Unauthenticated
from app.core.tokens import bearer_token
from app.http.deps import key_cache
from app.queue.trail import Reader


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("missing Authorization: Bearer <api key>")
    token = bearer_token(header)
    if token is None:
        raise Unauthenticated("Authorization must be 'Bearer <api key>'")
    return token


async def authenticate(request: Request, keys: KeyCache) -> Caller:
    """The caller whose key the request bears; while the key store cannot answer, a key
    verified shortly before still is (app.apikeys.cache)."""
    key_hash = hash_api_key(_bearer(request))
    try:
        caller = await keys.verify(key_hash)
    except Exception as exc:
        fallback = keys.usable_while_down(key_hash) if is_outage(exc) else None
        if fallback is None:
            raise
        return fallback
    if caller is None:
        raise Unauthenticated("unknown or revoked API key")
    return caller


async def authorize(request: Request, scope: str) -> Caller:
    """The caller of this request, who must hold `scope`."""
    caller = await authenticate(request, key_cache(request))
    request.state.key_id = caller.key_id  # for the access log
    if scope not in caller.scopes:
        raise Forbidden(f"this API key lacks the '{scope}' scope")
    return caller


def require_scope(scope: str) -> Callable[[Request], Coroutine[Any, Any, Caller]]:
    async def dependency(request: Request) -> Caller:
        return await authorize(request, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


def reader_with(scope: str) -> Callable[[Request], Coroutine[Any, Any, Reader]]:
    """A caller holding `scope` who reads the audit log, with the path they read it by (each
    read is recorded with both, app.queue.trail)."""

    async def dependency(request: Request) -> Reader:
        return Reader(await authorize(request, scope), request.url.path)

    dependency.__name__ = f"reader_with_{scope}"
    return dependency


# Callers by the scope they must hold: those who send events or read the log's tiles, and
# (as readers: what they are given is recorded) those who read events, verify, or administer
# their dead letters and the whole queue.
IngestorDep = Annotated[Caller, Depends(require_scope("ingest"))]
LogReaderDep = Annotated[Caller, Depends(require_scope("log"))]
ReaderDep = Annotated[Reader, Depends(reader_with("read"))]
AuditorDep = Annotated[Reader, Depends(reader_with("verify"))]
AdminDep = Annotated[Reader, Depends(reader_with("admin"))]
OperatorDep = Annotated[Reader, Depends(reader_with("operator"))]
