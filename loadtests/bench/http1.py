"""One keep-alive HTTP/1.1 connection on plain asyncio streams, as cheap on CPU as it can be: the
generator shares the machine with the service. httpx cost about 8 ms of CPU per 1,000-event bulk
request (17% of a core at 20,000 events/s, taken from the service it measured); on 2 cores, 64
one-connection httpx clients made 890 requests/s on GET /healthz."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
# A connection idle this long is opened anew: uvicorn closes idle ones after 5 s, and a request
# written into a connection the server is closing fails without an answer.
REUSE_WITHIN_S = 4.0


class Connection:
    """One connection to one API process; each request is the head made once and a body."""

    def __init__(self, url: str, path: str, key: str, post: bool) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.head = request_head(f"{self.host}:{self.port}", path, key, post)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used_at = 0.0

    async def exchange(self, body: bytes | None) -> int:
        """Send the request with `body` (None: a GET), read the whole answer; its status."""
        stale = time.monotonic() - self._used_at > REUSE_WITHIN_S
        if self._reader is None or self._reader.at_eof() or stale:
            self.close()
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        try:
            writer.write(request_bytes(self.head, body))
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, closing = parse_head(head)
            await reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        self._used_at = time.monotonic()
        if closing:
            self.close()
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def request_head(host: str, path: str, key: str, post: bool) -> bytes:
    """The request up to its Content-Length's value (a POST) or to its end (a GET)."""
    lines = [f"{'POST' if post else 'GET'} {path} HTTP/1.1", f"Host: {host}"]
    lines.append(f"Authorization: Bearer {key}")
    if not post:
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
    lines += ["Content-Type: application/json", "Content-Length: "]
    return "\r\n".join(lines).encode()


def request_bytes(head: bytes, body: bytes | None) -> bytes:
    if body is None:
        return head
    return b"%s%d\r\n\r\n%s" % (head, len(body), body)


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, whether the server closes) of a response head."""
    if len(head) > MAX_HEAD_BYTES or not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError("not an HTTP/1.1 response")
    status = int(head[9:12])
    length = -1
    closing = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            closing = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ConnectionError("chunked answers are not expected from the service")
    if length < 0:
        raise ConnectionError("answer without Content-Length")
    return status, length, closing
