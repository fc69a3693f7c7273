"""The worker's own Prometheus endpoint (`python -m app worker` with AUDIT_WORKER_METRICS_PORT):
GET /metrics and /healthz on AUDIT_WORKER_METRICS_HOST (loopback unless set), /metrics only
with AUDIT_METRICS_TOKEN when that is set, as the API answers it.

A few lines of HTTP/1.0 on asyncio streams, one request per connection: the head is read within
HEAD_TIMEOUT_S and at most HEAD_LIMIT bytes, so a scraper (or anyone else) cannot hold it open.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.core.config import Settings
from app.core.tokens import token_matches

HEAD_LIMIT = 8 * 1024

HEAD_TIMEOUT_S = 5.0


def _answer(status: str, body: bytes, media_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {media_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def metrics_reply(registry: CollectorRegistry, token: str, head: bytes) -> bytes:
    """The whole answer to one request head."""
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path = rest.partition(" ")[0].partition("?")[0]
    if method != "GET":
        return _answer("405 Method Not Allowed", b'{"error":{"code":"method_not_allowed"}}')
    if path == "/healthz":
        return _answer("200 OK", b'{"status":"ok"}')
    if path != "/metrics":
        return _answer("404 Not Found", b'{"error":{"code":"not_found"}}')
    if token:
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        header = headers.get("authorization", "")
        presented = header[7:] if header.lower().startswith("bearer ") else None
        if not token_matches(token, presented):
            return _answer("401 Unauthorized", b'{"error":{"code":"unauthenticated"}}')
    return _answer("200 OK", generate_latest(registry), CONTENT_TYPE_LATEST)


async def serve_metrics(settings: Settings, registry: CollectorRegistry) -> asyncio.Server:
    """Listen on the worker's metrics address; close the returned server to stop."""

    async def one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(TimeoutError, asyncio.LimitOverrunError, ValueError):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
                writer.write(metrics_reply(registry, settings.metrics_token, head))
                await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT_S)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(
        one_request, settings.worker_metrics_host, settings.worker_metrics_port, limit=HEAD_LIMIT
    )
