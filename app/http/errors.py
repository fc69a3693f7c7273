"""What a caller is told when a backing service cannot answer: the API says it in its JSON error
shape (app.api.errors), the console on a page of its own; both with the same status and
Retry-After."""

from __future__ import annotations

import logging

import asyncpg
import redis.exceptions
import sqlalchemy.exc

from app.core.errors import Unavailable

log = logging.getLogger(__name__)

# PostgreSQL or Redis down or timing out: 503 with Retry-After, not 500.
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def dependency_unavailable(exc: BaseException) -> Unavailable:
    """What a caller is told of a backing service that cannot answer (one of
    DEPENDENCY_ERRORS): 503 with Retry-After, whoever answers it (the API, the console)."""
    log.warning("dependency unavailable: %s", type(exc).__name__)
    message = "a backing service is unavailable; retry later"
    return Unavailable(message, headers={"Retry-After": "1"})
