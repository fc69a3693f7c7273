"""Streamed answers (exports, verifications) that hold a slot while they run, give up on a
client that stops reading, and say how they ended.

A client that asks for a large export and never reads it would otherwise keep its slot, its
database connections and its buffers for as long as it likes: the send of the next chunk waits
while the connection's buffers are full. Here every send has `send_timeout_s`; a client that
takes no bytes for that long has its answer ended (the connection closes) and the slot back.

However the answer ends (every chunk sent, the client gone or stalled, an error, the task
cancelled), `on_end` is called once with how, after the body's iterator is closed, and runs to
its end even when the answer's task is being cancelled: an export records there what it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.core.limits import Slot

log = logging.getLogger(__name__)

Ending = Literal["complete", "client_disconnected", "client_stalled", "error", "cancelled"]

OnEnd = Callable[[Ending], Awaitable[None]]

_finishing: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak references


class ClientStalled(Exception):
    """The client took no bytes for the whole send timeout."""


class GuardedStream(StreamingResponse):
    def __init__(
        self,
        content: AsyncIterable[bytes],
        *,
        slot: Slot,
        send_timeout_s: float,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        on_end: OnEnd | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.slot = slot
        self.send_timeout_s = send_timeout_s
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = _Watch(receive, send, self.send_timeout_s)
        ending: Ending = "error"
        try:
            await super().__call__(scope, watch.receive, watch.send)
            ending = watch.ending()
        except ClientStalled:
            ending = "client_stalled"
            log.warning(
                "ended a streamed answer: its client took nothing for %.0f s", self.send_timeout_s
            )
        except (ClientDisconnect, OSError):
            ending = "client_disconnected"
            raise
        except asyncio.CancelledError:
            ending = "cancelled"
            raise
        finally:
            self.slot.release()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()  # its database connections go back now, not at collection
            if self.on_end is not None:
                await _finish(self.on_end(ending))


@dataclass
class _Watch:
    """An answer's receive and send, watched: each send is timed, and whether the last chunk
    went out and whether the client went away is noted."""

    _receive: Receive
    _send: Send
    send_timeout_s: float
    sent_all: bool = False
    disconnected: bool = False

    async def send(self, message: Message) -> None:
        try:
            await asyncio.wait_for(self._send(message), self.send_timeout_s)
        except TimeoutError as exc:
            raise ClientStalled from exc
        if message["type"] != "http.response.body":
            return
        if not message.get("more_body", False):
            self.sent_all = True
        # Once the client is gone the server's send returns at once without sending and without
        # a pause: give the disconnect a turn to be heard, or a page built in memory would
        # count as sent to no one.
        await asyncio.sleep(0)

    async def receive(self) -> Message:
        message = await self._receive()
        self.disconnected = self.disconnected or message["type"] == "http.disconnect"
        return message

    def ending(self) -> Ending:
        """How an answer that raised nothing ended: sent whole, or its client went away (the
        response stops streaming when it hears of the disconnect)."""
        if self.sent_all:
            return "complete"
        return "client_disconnected" if self.disconnected else "cancelled"


async def _finish(step: Awaitable[None]) -> None:
    """Run `step` to its end even if this task is cancelled meanwhile (it then carries on
    alone); a failure is logged, never raised over what ended the answer."""
    task = asyncio.ensure_future(step)
    _finishing.add(task)
    task.add_done_callback(_finished)
    with contextlib.suppress(Exception):  # logged by _finished
        await asyncio.shield(task)


def _finished(task: asyncio.Task[None]) -> None:
    _finishing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("the end of a streamed answer was not recorded: %r", task.exception())
