"""The service's HTTP/1.1 protocol: uvicorn's httptools protocol with one send for a response's
head and body, and limits on what a client may take of a connection and of the process.

uvicorn's httptools protocol writes a response's status line and headers as soon as the app
starts the response, and the body in a second write: two send calls, and two TCP segments the
client must take, for every answer; under single-event ingest those sends are a large share of an
API process's CPU. `HttpProtocol` gives uvicorn a transport that holds a head back until the next
write (the body, written right after it in the same step) and sends both in one. A head with no
write after it in the same turn of the event loop (a HEAD answer, `100 Continue`, a stream whose
first chunk is not ready yet) goes out at the end of that turn. Writes keep their order.

Each connection is held to `HttpLimits` (app.api.http_limits): the size and field count of a
request head, the time a head and a body may take, and the connections a process holds open;
past them the protocol answers on its own (431, 414, 408, 503, in the service's error shape) and
closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.api.http_limits import (
    INVALID_REQUEST,
    HttpLimits,
    Refusal,
    body_timeout,
    head_timeout,
    head_too_large,
    over_capacity,
    refusals,
    too_many_headers,
)

HEAD_START = b"HTTP/"

HEAD_END = b"\r\n\r\n"

DEFAULT_LIMITS = HttpLimits()

LINGER_S = 2.0  # how long a refused client's further input is read and dropped


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


class HeadRefused(Exception):
    """Raised from a parser callback: the head being read is answered with `refusal`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.code)
        self.refusal = refusal


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `HeadJoiningTransport`, within `HttpLimits`.

    A head is measured as it is parsed: its request target and whole header fields exactly, a
    field still arriving by the bytes fed since the last whole piece; data is fed in slices of
    at most the head limit, so the parser never holds more than about twice the limit of one
    head, however much is sent. A connection has one head timer (from its start, then from each
    answer's end) and, only while a body arrives over several reads, one body timer; both look
    at timestamps when they fire, so no timer is set or cancelled per request.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: HttpLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._max_head = limits.max_header_bytes  # read per field: plain attributes
        self._max_fields = limits.max_header_count
        self._refused = False  # answered (or to be answered) by the protocol: input is dropped
        self._deferred: Refusal | None = None  # that answer, waiting for the app's to go first
        self._head_open = False
        self._head_size = 0  # the open head's request target and whole fields, in bytes
        self._head_unseen = 0  # bytes fed since its last whole piece: a field still arriving
        self._heads_begun = 0
        self._header_count = 0
        self._idle_since = 0.0  # the connection's start, or its last answer's end
        self._reading_body = False
        self._body_since = 0.0
        self._body_last = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self._refuse_connection(transport)  # type: ignore[arg-type]
            return
        joined = HeadJoiningTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(joined)  # type: ignore[arg-type]
        self._idle_since = self.loop.time()
        self._arm_head_timer(self._idle_since + self.limits.header_timeout_s)

    def _refuse_connection(self, transport: asyncio.Transport) -> None:
        """Over the cap: answered 503 and closed at once, never counted or timed."""
        self._refused = True
        self.transport = transport
        refusal = over_capacity(self.limits)
        transport.write(refusal.response(self.server_state.default_headers))
        transport.close()
        refusals.add(refusal.code)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        if self.flow is not None:  # None: refused over the cap, never begun
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._refused:
            return
        step = self.limits.max_header_bytes
        if len(data) <= step:
            self._feed(data)
        else:
            view = memoryview(data)
            for start in range(0, len(data), step):
                if not self._feed(view[start : start + step]):
                    break
        if self._reading_body and not self._refused:
            self._body_last = self.loop.time()
            if self._body_timer is None:
                self._arm_body_timer(self._body_last + self.limits.body_timeout_s)

    def _feed(self, part: bytes | memoryview) -> bool:
        """Parse `part`; False once the connection is no longer read."""
        begun, size = self._heads_begun, self._head_size
        try:
            self.parser.feed_data(part)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._stop_reading()  # the connection is the WebSocket protocol's now
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            self._refuse_head(
                refused.refusal if isinstance(refused, HeadRefused) else INVALID_REQUEST
            )
            return False
        if self._head_open:  # a head spans reads: what of it is not parsed whole yet counts
            progressed = self._heads_begun != begun or self._head_size != size
            unseen = 0 if progressed else self._head_unseen + len(part)
            self._head_unseen = unseen
            if self._head_size + unseen > self._max_head:
                self._refuse_head(self._head_refusal())
                return False
        return True

    # Parser callbacks: measure the head, mark where a body starts and ends.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_size = self._head_unseen = self._header_count = 0
        self._heads_begun += 1

    # on_url and on_header are uvicorn's, inlined (a call less per piece), with the measuring.
    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        count = self._header_count = self._header_count + 1
        size = self._head_size = self._head_size + len(name) + len(value) + 4  # ": ", CRLF
        if count > self._max_fields or size > self._max_head:
            raise HeadRefused(self._head_refusal())
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace, not part of the value
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def _head_refusal(self) -> Refusal:
        if self._header_count > self._max_fields:
            return too_many_headers(self.limits)
        return head_too_large(self.limits, len(self.url))

    def on_headers_complete(self) -> None:
        self._head_open = False
        if self._head_size > self._max_head:  # the target alone
            raise HeadRefused(self._head_refusal())
        self._reading_body = True
        self._body_since = self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_body = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()
        if self._refused:
            if self._deferred is not None and self.cycle.response_complete:
                self._answer_and_close(self._deferred)
        elif self._head_timer is None and not self.transport.is_closing():
            self._arm_head_timer(self._idle_since + self.limits.header_timeout_s)

    # Timers.
    def _arm_head_timer(self, when: float) -> None:
        self._head_timer = self.loop.call_at(when, self._check_head)

    def _arm_body_timer(self, when: float) -> None:
        self._body_timer = self.loop.call_at(when, self._check_body)

    def _answer_due(self) -> bool:
        """Whether the app still owes an answer on this connection."""
        return self.cycle is not None and not self.cycle.response_complete

    def _check_head(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing() or self._answer_due():
            return  # the answer's end arms the timer again
        now = self.loop.time()
        if self._reading_body:  # its own timer watches it; look again later
            due = now + self.limits.header_timeout_s
        else:
            due = self._idle_since + self.limits.header_timeout_s
        if now < due:
            self._arm_head_timer(due)
        elif self._head_open:
            self._refuse_head(head_timeout(self.limits))
        else:
            self.transport.close()  # nothing sent since connecting or the last answer

    def _check_body(self) -> None:
        self._body_timer = None
        if self._refused or not self._reading_body or self.transport.is_closing():
            return
        now = self.loop.time()
        limits = self.limits
        if self.flow.read_paused or self.pipeline:  # this side holds reading back, not the client
            self._body_last = now
            self._arm_body_timer(now + limits.body_timeout_s)
            return
        silent_until = self._body_last + limits.body_timeout_s
        due = min(silent_until, self._body_since + limits.body_deadline_s)
        if now < due:
            self._arm_body_timer(due)
        else:
            self._expire_body()

    # Answers of the protocol's own.
    def _refuse_head(self, refusal: Refusal) -> None:
        """Answer the head being read with `refusal` and close; answers the app still owes on
        this connection go first."""
        self._stop_reading()
        if self._answer_due():
            self._deferred = refusal  # on_response_complete sends it after the last one
        else:
            self._answer_and_close(refusal)

    def _expire_body(self) -> None:
        """The body stalled or ran past its deadline: the app's receive() gets a disconnect,
        the client a 408 if its answer had not begun."""
        cycle = self.cycle
        self._stop_reading()
        started = cycle.response_started
        if not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self._answer_and_close(None if started else body_timeout(self.limits))

    def _stop_reading(self) -> None:
        self._refused = True
        self._head_open = self._reading_body = False

    def _answer_and_close(self, refusal: Refusal | None) -> None:
        """Send `refusal`, then end the connection: a FIN at once, and the rest of what the
        client sends read and dropped for up to LINGER_S, so a client still sending reads the
        answer instead of a reset."""
        transport = self.transport
        if transport.is_closing():
            return
        if refusal is not None:
            transport.write(refusal.response(self.server_state.default_headers))
            refusals.add(refusal.code)
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()
