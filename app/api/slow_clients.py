"""Streamed answers (exports, verifications) that hold a slot while they run and give up on a
client that stops reading.

A client that asks for a large export and never reads it would otherwise keep its slot, its
database connections and its buffers for as long as it likes: the send of the next chunk waits
while the connection's buffers are full. Here every send has `send_timeout_s`; a client that
takes no bytes for that long has its answer ended (the connection closes) and the slot back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.core.limits import Slot

log = logging.getLogger(__name__)


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
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.slot = slot
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.send_timeout_s)
            except TimeoutError as exc:
                raise ClientStalled from exc

        try:
            await super().__call__(scope, receive, timed_send)
        except ClientStalled:
            log.warning(
                "ended a streamed answer: its client took nothing for %.0f s", self.send_timeout_s
            )
        finally:
            self.slot.release()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()  # its database connections go back now, not at collection
