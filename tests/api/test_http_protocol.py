"""The HTTP protocol that sends a response's head and body in one write (app.api.http_protocol):
the transport on its own, and a real uvicorn server on loopback answering plain, HEAD, 100
Continue, streamed and pipelined requests byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.http_protocol import HeadJoiningTransport, HttpProtocol
from app.local.servers import free_port
from tests.conftest import eventually

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording(asyncio.Transport):
    """A transport that keeps what is written to it, one entry per write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.writes.extend(bytes(c) for c in chunks)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


async def next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_head_and_body_leave_in_one_write() -> None:
    inner = Recording()
    joined = HeadJoiningTransport(inner, asyncio.get_running_loop())
    joined.write(HEAD)
    assert inner.writes == [] and joined.get_write_buffer_size() == len(HEAD)
    joined.write(b"ok")
    assert inner.writes == [HEAD + b"ok"]
    joined.write(b"more")  # not a head: straight through
    assert inner.writes == [HEAD + b"ok", b"more"]
    await next_turn()  # the scheduled flush finds nothing held
    assert inner.writes == [HEAD + b"ok", b"more"]


async def test_a_head_alone_goes_out_at_the_end_of_the_turn() -> None:
    inner = Recording()
    joined = HeadJoiningTransport(inner, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert inner.writes == []
    await next_turn()
    assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


async def test_close_and_writelines_send_the_held_head_first() -> None:
    inner = Recording()
    joined = HeadJoiningTransport(inner, asyncio.get_running_loop())
    joined.write(HEAD)
    joined.writelines([b"o", b"k"])
    assert inner.writes == [HEAD, b"o", b"k"]
    joined.write(HEAD)
    joined.close()
    assert inner.writes[-1] == HEAD and inner.closed
    assert joined.get_extra_info("peername") == ("127.0.0.1", 5)  # the rest passes through


async def test_nothing_is_written_to_a_transport_already_gone() -> None:
    inner = Recording()
    joined = HeadJoiningTransport(inner, asyncio.get_running_loop())
    joined.write(HEAD)
    joined.abort()
    await next_turn()
    assert inner.writes == [] and inner.aborted
    joined.write(HEAD)
    inner.closed = True  # the peer went away before the turn ended
    await next_turn()
    assert inner.writes == []


async def sample_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two"):
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = b"echo:" + body if body else scope["path"].encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@contextlib.asynccontextmanager
async def served(app: ASGIApp = sample_app, http: Any = HttpProtocol) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http, log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:

        async def started() -> bool:
            return server.started

        await eventually(started, 10)
        yield port
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, request: bytes, until: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        got = b""
        while not got.endswith(until):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, got
            got += chunk
        return got
    finally:
        writer.close()


async def test_a_real_server_answers_through_the_protocol() -> None:
    async with served() as port:
        plain = await exchange(port, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", b"/plain")
        assert plain.startswith(b"HTTP/1.1 200 OK\r\n") and plain.endswith(b"\r\n\r\n/plain")

        head = await exchange(port, b"HEAD /plain HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n")
        assert b"content-length: 6" in head and head.endswith(b"\r\n\r\n")

        continued = (
            b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(continued)
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"hi")
        answer = b""
        while not answer.endswith(b"echo:hi"):
            answer += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()

        streamed = await exchange(port, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n", b"0\r\n\r\n")
        assert b"transfer-encoding: chunked" in streamed
        assert streamed.endswith(b"4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n")

        pipelined = b"".join(f"GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(5))
        answers = await exchange(port, pipelined, b"/r4")
        assert [answers.find(f"/r{i}".encode()) for i in range(5)] == sorted(
            answers.find(f"/r{i}".encode()) for i in range(5)
        )
        assert answers.count(b"HTTP/1.1 200 OK") == 5
