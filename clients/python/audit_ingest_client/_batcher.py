"""Background batchers: `add` returns at once, events leave in bulk requests by size or after a
linger, memory is bounded, and what is left is sent on close."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections import deque

from audit_ingest_client._client import AsyncAuditClient, AuditClient, AuditError
from audit_ingest_client._event import Event

log = logging.getLogger("audit_ingest_client")
EXIT_TIMEOUT_S = 30.0  # what a program's exit waits for the service at most


class Batcher:
    """Events from any thread, sent by one background thread through an AuditClient."""

    def __init__(
        self,
        client: AuditClient,
        *,
        max_batch: int = 500,
        linger_s: float = 0.2,
        max_pending: int = 10_000,
    ) -> None:
        self.client = client
        self.max_batch, self.linger_s, self.max_pending = max_batch, linger_s, max_pending
        self._pending: deque[Event] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self._give_up_at = float("inf")
        self.failed: list[tuple[list[Event], Exception]] = []  # refused for good (4xx)
        self._thread = threading.Thread(target=self._run, name="audit-batcher", daemon=True)
        self._thread.start()
        atexit.register(self.close, EXIT_TIMEOUT_S)

    def add(self, event: Event) -> None:
        """Queue an event; blocks while max_pending events wait already."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            while len(self._pending) >= self.max_pending:
                self._lock.wait()
            self._pending.append(event)
            self._lock.notify_all()

    def _take(self) -> list[Event] | None:
        with self._lock:
            while not self._pending and not self._closed:
                self._lock.wait()
            if not self._pending:
                return None
            deadline = time.monotonic() + self.linger_s
            while len(self._pending) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            count = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(count)]
            self._lock.notify_all()
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self.client.send_many(batch)
            except AuditError as exc:
                self.failed.append((batch, exc))
                log.error("audit events refused: %s", exc)
            except Exception as exc:  # not delivered (no spool), or anything else: keep them
                log.warning("audit events not delivered yet: %s", exc)
                with self._lock:
                    self._pending.extendleft(reversed(batch))
                    if self._closed and time.monotonic() > self._give_up_at:
                        log.error("%d audit events not delivered at exit", len(self._pending))
                        self._pending.clear()
                        self._lock.notify_all()
                        return
                time.sleep(1.0)

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is pending (and the spool), then stop; with `timeout_s` (as at exit), give
        up on what the service did not take by then (logged)."""
        with self._lock:
            self._closed = True
            if timeout_s is not None:
                self._give_up_at = time.monotonic() + timeout_s
            self._lock.notify_all()
        self._thread.join(None if timeout_s is None else timeout_s + 2)
        if not self._thread.is_alive():
            self.client.flush_spool()
        atexit.unregister(self.close)


class AsyncBatcher:
    """The same for asyncio: one task sends through an AsyncAuditClient."""

    def __init__(
        self,
        client: AsyncAuditClient,
        *,
        max_batch: int = 500,
        linger_s: float = 0.2,
        max_pending: int = 10_000,
    ) -> None:
        self.client = client
        self.max_batch, self.linger_s = max_batch, linger_s
        self._queue: asyncio.Queue[Event] = asyncio.Queue(max_pending)
        self._closed = False
        self.failed: list[tuple[list[Event], Exception]] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def add(self, event: Event) -> None:
        """Queue an event; waits while max_pending events wait already."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        await self._queue.put(event)

    async def _batch(self) -> list[Event]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.linger_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self._closed:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._batch()
            while True:
                try:
                    await self.client.send_many(batch)
                except AuditError as exc:
                    self.failed.append((batch, exc))
                    log.error("audit events refused: %s", exc)
                except Exception as exc:  # not delivered (no spool), or anything else
                    log.warning("audit events not delivered yet: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
                break
            for _ in batch:
                self._queue.task_done()

    async def close(self) -> None:
        """Send what is pending (and the spool), then stop."""
        self._closed = True
        await self._queue.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.flush_spool()
