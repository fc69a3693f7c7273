"""Coalescing the stream writes of concurrent requests.

Under load many small requests (single events, small bulks) arrive together; each used to pay
its own Redis round trip and Lua call. Here a request hands its records over and waits: while a
write is in flight, the records of the requests that come meanwhile gather, and the next write
takes all of them in one Lua call (one atomic append: all of them are queued, or none). A request
is answered 202 only after the write holding its records returned, so nothing is acknowledged
that Redis did not take; when the write fails, every request in it fails (503) and none of their
records was queued. When idle, a request's write starts at once: no added latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from app.events.record import EventRecord
from app.queue.shards import ShardedStream

Pending = tuple[Sequence[EventRecord], asyncio.Future[None]]


class EnqueueBatcher:
    def __init__(self, stream: ShardedStream, chunk: int, max_events: int = 5_000) -> None:
        self.stream = stream
        self.chunk = chunk
        self.max_events = max_events
        self._pending: list[Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def enqueue(self, records: Sequence[EventRecord]) -> None:
        """Queue the records (in one Lua call with others' records); returns once they are in
        the stream, raises what the write raised otherwise."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((records, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="enqueue")
        await done

    def _take(self) -> list[Pending]:
        taken, events = 0, 0
        for records, _ in self._pending:
            if taken and events + len(records) > self.max_events:
                break
            taken += 1
            events += len(records)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _write_all(self) -> None:
        try:
            while self._pending:
                await self._write(self._take())
        finally:
            self._writer = None
            for _, done in self._pending:  # cancelled with requests still waiting
                _settle(done, asyncio.CancelledError())
            self._pending = []

    async def _write(self, batch: list[Pending]) -> None:
        records = [record for part, _ in batch for record in part]
        try:
            await self.stream.enqueue(records, self.chunk)
        except Exception as exc:  # every request of this write fails; the next write goes on
            for _, done in batch:
                _settle(done, exc)
            return
        except BaseException as exc:
            for _, done in batch:
                _settle(done, exc)
            raise
        for _, done in batch:
            _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
