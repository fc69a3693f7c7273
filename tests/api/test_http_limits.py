"""The HTTP layer's own limits (app.api.http_protocol, app.api.http_limits), over raw sockets
against `python -m app serve` in its own process: the request head's size and header count, the
time a head and a body may take, keep-alive idleness and the open connections of a process; then, on
a server in this process, what the app receives and how refusals keep their order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.api.http_limits import RESERVED_FILES, HttpLimits, connection_cap
from app.api.http_protocol import HttpProtocol
from app.apikeys.keys import create_api_key
from app.core.config import Settings
from app.core.db import create_engine
from app.local.servers import free_port
from tests.api.test_http_protocol import served
from tests.conftest import key_row_mac, make_settings
from tests.served import serving

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
BODY_DEADLINE_S = 2.5
KEEP_ALIVE_S = 0.5
CAPPED_CONNECTIONS = 8  # per process of the two-process server
SLACK_S = 3.0  # on top of a timeout: a shared two-core host is slow at times


async def ingest_key(settings: Settings) -> str:
    engine = create_engine(settings)
    try:
        _, key = await create_api_key(
            engine, "org-http-limits", ["ingest"], "http-limits", key_row_mac(settings)
        )
    finally:
        await engine.dispose()
    return key


@dataclass
class Server:
    """One `python -m app serve` (with its workers when api_processes > 1)."""

    port: int
    pid: int
    log: Path
    auth: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def limited_server(
    database_url: str, redis_url: str, log: Path, **overrides: Any
) -> Iterator[Server]:
    settings = make_settings(
        database_url,
        redis_url,
        port=free_port(),
        run_writers=False,
        log_level="WARNING",
        **overrides,
    )
    with serving(settings, log) as process:
        key = asyncio.run(ingest_key(settings))
        yield Server(settings.port, process.process.pid, log, key, settings=overrides)


@pytest.fixture(scope="module")
def server(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One process, short timeouts, the default head limits."""
    with limited_server(
        database_url,
        redis_url,
        tmp_path_factory.mktemp("serve") / "serve.log",
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        body_deadline_s=BODY_DEADLINE_S,
        keep_alive_s=KEEP_ALIVE_S,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def two_processes(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Two API processes sharing the port, each holding at most CAPPED_CONNECTIONS."""
    with limited_server(
        database_url,
        redis_url,
        tmp_path_factory.mktemp("serve2") / "serve.log",
        api_processes=2,
        max_connections=CAPPED_CONNECTIONS,
    ) as running:
        yield running


# --- raw HTTP/1.1 over sockets


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket, within_s: float) -> bytes:
    """All the server sends until it closes the connection; AssertionError if it is still open
    after `within_s`."""
    deadline = time.monotonic() + within_s
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"still open after {within_s} s; received {got[:300]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One whole response with a content-length: its status and body."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {got!r}"
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-body: {got!r}"
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with connect(port, timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return read_response(sock)


def status_and_error(answer: bytes) -> tuple[int, str]:
    """The status of a closing answer and its JSON error code."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:300]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]["code"]


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def trickle(sock: socket.socket, data: bytes, every_s: float, within_s: float) -> float:
    """Send `data` a byte at a time until the server answers or closes; how long that took."""
    started = time.monotonic()
    for byte in data:
        if readable(sock) or time.monotonic() - started > within_s:
            break
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(every_s)
    return time.monotonic() - started


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            fields[name] = int(value.split()[0])
    return fields


class HealthProbe(threading.Thread):
    """GET /healthz on a fresh connection every 50 ms until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.halt = threading.Event()
        self.answers: list[tuple[int | str, float]] = []

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                status: int | str = get(self.port, "/healthz", timeout=10)[0]
            except OSError as exc:
                status = repr(exc)
            self.answers.append((status, time.monotonic() - started))
            self.halt.wait(0.05)


def stream_huge_head(port: int, size: int) -> tuple[bytes, int]:
    """Send a head with one header of `size` bytes, 1 MiB at a time, stopping once the server
    answers; the answer and how much was sent."""
    chunk = b"a" * (1 << 20)
    sent = 0
    with connect(port, timeout=20) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < size and not readable(sock):
                sock.sendall(chunk)
                sent += len(chunk)
            if sent >= size:
                sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(sock, 20), sent


# --- the request head


def test_a_huge_header_is_refused_with_memory_flat_and_healthz_answering(server: Server) -> None:
    pid = server.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak RSS starts again from now
    before = memory_kib(pid)
    probe = HealthProbe(server.port)
    probe.start()
    try:
        answer, sent = stream_huge_head(server.port, 64 << 20)
        time.sleep(0.3)  # a few probes after the refusal too
    finally:
        probe.halt.set()
        probe.join(15)
    after = memory_kib(pid)
    assert status_and_error(answer) == (431, "header_too_large"), answer[:300]
    assert sent < 8 << 20  # answered long before the header ended
    growth_kib = after["VmHWM"] - before["VmRSS"]
    assert growth_kib < 16 * 1024, (before, after)
    assert probe.answers and all(status == 200 for status, _ in probe.answers), probe.answers
    assert max(took for _, took in probe.answers) < 5, probe.answers


def test_too_many_headers_are_refused(server: Server) -> None:
    headers = "".join(f"X-Field-{i}: {i}\r\n" for i in range(150))
    with connect(server.port) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        answer = read_until_closed(sock, 10)
    assert status_and_error(answer) == (431, "too_many_headers")


def test_a_head_over_the_size_in_many_headers_is_refused(server: Server) -> None:
    headers = "".join(f"X-Field-{i}: {'v' * 500}\r\n" for i in range(80))  # ~40 KiB
    with connect(server.port) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        answer = read_until_closed(sock, 10)
    assert status_and_error(answer) == (431, "header_too_large")


def test_an_over_long_request_target_is_refused(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz?q=" + b"a" * (64 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock, 10)
    assert status_and_error(answer) == (414, "uri_too_long")


def test_every_operation_documents_the_protocol_answers(server: Server) -> None:
    """What the HTTP layer answers on its own, before any route runs, is in the OpenAPI document
    for every operation, in the one error shape (a client or a fuzzer meets them anywhere)."""
    status, body = get(server.port, "/openapi.json")
    assert status == 200
    document = json.loads(body)
    error_shape = {"$ref": "#/components/schemas/ErrorResponse"}
    missing = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            answers = operation["responses"]
            codes = [
                code
                for code in ("408", "413", "414", "431", "503")
                if answers.get(code, {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
                != error_shape
            ]
            if codes:
                missing[f"{method.upper()} {path}"] = codes
    assert not missing, missing
    assert len(document["paths"]) > 10


def test_a_head_within_the_limits_is_served(server: Server) -> None:
    headers = "".join(f"X-Field-{i}: {'v' * 200}\r\n" for i in range(90))  # ~20 KiB
    with connect(server.port) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        assert read_response(sock) == (200, b'{"status":"ok"}')


# --- time limits


def test_a_half_sent_head_is_answered_408_and_closed(server: Server) -> None:
    with connect(server.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        answer = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
        took = time.monotonic() - started
    assert status_and_error(answer) == (408, "request_timeout")
    assert took >= HEADER_TIMEOUT_S * 0.9


def test_a_trickled_head_is_closed_at_its_deadline(server: Server) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: 1\r\n" * 100
    with connect(server.port) as sock:
        took = trickle(sock, head, 0.2, HEADER_TIMEOUT_S + SLACK_S)
        answer = read_until_closed(sock, SLACK_S)
    assert took < HEADER_TIMEOUT_S + SLACK_S
    assert status_and_error(answer) == (408, "request_timeout")


def test_a_silent_connection_is_closed_at_the_header_timeout(server: Server) -> None:
    with connect(server.port) as sock:
        assert read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S) == b""


def post_head(server: Server, length: int) -> bytes:
    return (
        f"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_stalled_body_is_answered_408_and_closed(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(post_head(server, 500) + b'{"action": "fhir.patient.read", ')
        started = time.monotonic()
        answer = read_until_closed(sock, BODY_TIMEOUT_S + SLACK_S)
        took = time.monotonic() - started
    assert status_and_error(answer) == (408, "request_timeout")
    assert took >= BODY_TIMEOUT_S * 0.9
    time.sleep(0.3)  # the app has seen its disconnect: a client gone, not a failure of ours
    assert "unhandled error" not in server.log.read_text()


def test_a_trickled_body_is_closed_at_its_deadline(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(post_head(server, 1000))
        took = trickle(sock, b" " * 1000, 0.2, BODY_DEADLINE_S + SLACK_S)
        answer = read_until_closed(sock, SLACK_S)
    assert took < BODY_DEADLINE_S + SLACK_S
    assert status_and_error(answer) == (408, "request_timeout")


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # still open for a second
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert read_until_closed(sock, KEEP_ALIVE_S + 2) == b""
        assert time.monotonic() - started >= KEEP_ALIVE_S * 0.9


# --- open connections, with two processes


def test_connections_over_the_cap_are_refused_and_the_rest_served(
    two_processes: Server,
) -> None:
    port = two_processes.port
    cap = 2 * CAPPED_CONNECTIONS
    socks = [connect(port) for _ in range(cap + 24)]
    try:
        time.sleep(1.0)  # a refusal is written at once; an accepted connection hears nothing
        refused = [s for s in socks if readable(s)]
        held = [s for s in socks if s not in refused]
        assert len(refused) >= 24 and len(held) <= cap, (len(refused), len(held))
        for sock in refused:
            assert status_and_error(read_until_closed(sock, 5)) == (503, "too_many_connections")
        for sock in held[:4]:  # the connections under the cap keep working
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # once they are gone, a fresh connection is served
        with contextlib.suppress(OSError, AssertionError, StopIteration):
            if get(port, "/healthz")[0] == 200:
                break
        assert time.monotonic() < deadline, "no /healthz answer after the connections closed"
        time.sleep(0.1)


def test_the_head_limits_hold_in_every_process(two_processes: Server) -> None:
    headers = "".join(f"X-Field-{i}: {i}\r\n" for i in range(150))
    for _ in range(4):  # the port's connections land on either process
        with connect(two_processes.port) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
            answer = read_until_closed(sock, 10)
        assert status_and_error(answer) == (431, "too_many_headers")


# --- in this process, with an app that records what it receives


async def length_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers `<path>:<body length>`; /slow after 0.2 s; records its messages on the scope's
    state list `received`."""
    if scope["type"] != "http":
        return
    received: list[Message] = scope["state"]["received"]
    size = 0
    while True:
        message = await receive()
        received.append(message)
        size += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(0.2)
    answer = f"{scope['path']}:{size}".encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@contextlib.asynccontextmanager
async def limited(limits: HttpLimits) -> AsyncIterator[tuple[int, list[Message]]]:
    received: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"received": received}
        await length_app(scope, receive, send)

    async with served(app, functools.partial(HttpProtocol, limits=limits)) as port:
        yield port, received


async def read_all(reader: asyncio.StreamReader, within_s: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.read(), within_s)


async def test_a_stalled_body_reaches_the_app_as_a_disconnect() -> None:
    async with limited(HttpLimits(body_timeout_s=0.3)) as (port, received):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        answer = await read_all(reader)
        writer.close()
    assert status_and_error(answer) == (408, "request_timeout")
    assert received[0] == {"type": "http.request", "body": b"0123456789", "more_body": True}
    assert received[-1] == {"type": "http.disconnect"}


async def test_a_body_and_the_next_head_in_one_write_are_not_taken_for_a_head() -> None:
    async with limited(HttpLimits(max_header_bytes=1024)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"x" * 300_000
        writer.write(
            b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
            + b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answers = await read_all(reader)
        writer.close()
    assert answers.count(b"HTTP/1.1 200 OK") == 2, answers
    assert answers.index(b"/big:300000") < answers.index(b"/next:0")


async def test_a_refused_head_waits_for_the_answer_before_it() -> None:
    async with limited(HttpLimits(max_header_bytes=1024)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * 4096
            + b"\r\n\r\n"
        )
        answers = await read_all(reader)
        writer.close()
    first, _, second = answers.partition(b"/slow:0")
    assert first.startswith(b"HTTP/1.1 200 OK"), answers
    assert status_and_error(second) == (431, "header_too_large")


# --- the open-files limit and the connection cap


def test_serve_raises_the_open_files_limit_and_caps_connections_below_it() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard limit on open files above 256")
    script = (
        "import resource\n"
        "from app.api.http_limits import raise_open_files_limit\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lowered,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert [int(n) for n in out] == [hard, hard]
    assert connection_cap(1000, 4096) == 1000
    assert connection_cap(1000, 1024) == 1024 - RESERVED_FILES
    assert connection_cap(1000, 10) == 1
