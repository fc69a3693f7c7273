"""One send for a response's head and body.

uvicorn's httptools protocol writes a response's status line and headers as soon as the app
starts the response, and the body in a second write: two send calls, and two TCP segments the
client must take, for every answer. Profiles of single-event ingest put those two sends at about
a quarter of an API process's CPU. `HttpProtocol` gives uvicorn a transport that holds a head
back until the next write (the body, written right after it in the same step) and sends both
in one. A head with no write after it in the same turn of the event loop (a HEAD answer,
`100 Continue`, a stream whose first chunk is not ready yet) goes out at the end of that turn.
Writes keep their order; nothing else about the connection changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_START = b"HTTP/"
HEAD_END = b"\r\n\r\n"


class HeadJoiningTransport:
    """Wraps a transport: a write that is a whole response head waits for the next write."""

    __slots__ = ("_held", "_inner", "_loop")

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._held: bytes | None = None
        self._loop = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._inner.write(held + data)
        elif data[:5] == HEAD_START and data[-4:] == HEAD_END:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._inner.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._inner.is_closing():
                self._inner.write(held)

    def writelines(self, chunks: Any) -> None:
        self.flush()
        self._inner.writelines(chunks)

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self._held = None
        self._inner.abort()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `HeadJoiningTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        joined = HeadJoiningTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(joined)  # type: ignore[arg-type]
