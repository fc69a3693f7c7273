"""What one connection and one process may take of the HTTP layer, and the answers the protocol
(app.api.http_protocol) gives on its own when a client goes past it.

Without these, uvicorn's httptools protocol buffered a request head of any size (one huge header
could swell a process's memory and stall its event loop), kept half-sent heads and bodies
and never-used connections open indefinitely, and accepted connections until the process ran
out of file descriptors.
"""

from __future__ import annotations

import http
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.config import Settings

log = logging.getLogger(__name__)

# File descriptors a process needs besides client connections: the listening socket, the event
# loop's own, database and Redis pools, logs.
RESERVED_FILES = 128

REFUSALS_LOG_EVERY_S = 10.0

UNLIMITED_FILES = 1 << 20  # what an unlimited hard limit is taken for (Linux's usual nr_open)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 32 * 1024  # request line and header fields together
    max_header_count: int = 100
    header_timeout_s: float = 10.0  # from the connection's start or its previous answer
    body_timeout_s: float = 15.0  # longest silence within a body
    body_deadline_s: float = 60.0  # a whole body, from the end of its head
    max_connections: int = 1000  # open in one process

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            body_deadline_s=settings.body_deadline_s,
            max_connections=connection_cap(settings.max_connections, open_files),
        )


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (processes it starts
    inherit it); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return UNLIMITED_FILES
    wanted = UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
        return soft
    return wanted


def connection_cap(wanted: int, open_files: int) -> int:
    """`wanted`, or fewer when the open-files limit leaves no room for that many."""
    room = max(1, open_files - RESERVED_FILES)
    if wanted <= room:
        return wanted
    log.warning(
        "AUDIT_MAX_CONNECTIONS=%d does not fit the open-files limit of %d: holding %d",
        wanted,
        open_files,
        room,
    )
    return room


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer the protocol gives itself, in the service's error shape, closing the
    connection."""

    status: int
    code: str
    message: str
    details: Any = None
    retry_after_s: int | None = None

    def response(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        body = orjson.dumps(
            {"error": {"code": self.code, "message": self.message, "details": self.details}}
        )
        phrase = http.HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {phrase}".encode()]
        lines += [name + b": " + value for name, value in default_headers]
        lines += [
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
        ]
        if self.retry_after_s is not None:
            lines.append(b"retry-after: %d" % self.retry_after_s)
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


def head_too_large(limits: HttpLimits, target_bytes: int) -> Refusal:
    limit = limits.max_header_bytes
    if target_bytes * 2 > limit:  # the request target is most of it
        return Refusal(
            414, "uri_too_long", "request line is over the head size limit", {"max_bytes": limit}
        )
    return Refusal(
        431, "header_too_large", f"request head is over {limit} bytes", {"max_bytes": limit}
    )


def too_many_headers(limits: HttpLimits) -> Refusal:
    count = limits.max_header_count
    return Refusal(
        431, "too_many_headers", f"request has over {count} header fields", {"max_count": count}
    )


def head_timeout(limits: HttpLimits) -> Refusal:
    seconds = limits.header_timeout_s
    return Refusal(408, "request_timeout", f"request head not received within {seconds:g} s", None)


def body_timeout(limits: HttpLimits) -> Refusal:
    details = {"timeout_s": limits.body_timeout_s, "deadline_s": limits.body_deadline_s}
    return Refusal(408, "request_timeout", "request body not received in time", details)


def over_capacity(limits: HttpLimits) -> Refusal:
    cap = limits.max_connections
    return Refusal(
        503,
        "too_many_connections",
        "the server holds as many connections as it takes; retry later",
        {"max_connections": cap},
        retry_after_s=1,
    )


INVALID_REQUEST = Refusal(400, "bad_request", "request is not valid HTTP/1.1")


class RefusalTally:
    """The protocol's refusals by code, logged with the first one and then at most once per
    REFUSALS_LOG_EVERY_S (an attack must not become a log flood)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.since = time.monotonic() - REFUSALS_LOG_EVERY_S

    def add(self, code: str) -> None:
        self.counts[code] += 1
        now = time.monotonic()
        if now - self.since >= REFUSALS_LOG_EVERY_S:
            log.warning("HTTP requests refused", extra={"refused": dict(self.counts)})
            self.counts.clear()
            self.since = now


refusals = RefusalTally()
