"""A loopback TCP proxy that a test can cut and restore, to take PostgreSQL 'down' for one
client without touching the shared server."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

import pytest


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._links.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()


async def proxied_database(database_url: str) -> tuple[CuttableProxy, str]:
    """A started proxy in front of the test database, and the URL that goes through it.
    Skips the test when the database is reached over a socket rather than TCP."""
    target = urlsplit(database_url)
    if not target.port:
        pytest.skip("the test database is not on TCP")
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port)
    await proxy.start()
    user = target.netloc.rsplit("@", 1)[0] + "@" if "@" in target.netloc else ""
    return proxy, urlunsplit(target._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
