"""Background batchers: `add` returns at once, events leave in bulk requests by size or after a
linger, memory is bounded, and what is left is sent on close, within its timeout. Every event
added is delivered, spooled, refused alone (in `refused`, and `on_refused`), or handed back by
`close()` when its time is up; none holds back the others."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from audit_ingest_client._client import (
    AccessError,
    AsyncAuditClient,
    AuditClient,
    EventsRefused,
    Refusal,
    Undelivered,
)
from audit_ingest_client._event import Event

log = logging.getLogger("audit_ingest_client")
EXIT_TIMEOUT_S = 30.0  # what close(), and so a program's exit, waits for the service at most
BACKOFF_S = 1.0  # between tries of a batch the service did not take


class _Refusals:
    """The refusals a batcher met: the latest `max_pending` in `refused`, each batch of them
    handed to `on_refused` (when given) on the sending thread or task."""

    def __init__(self, on_refused: Callable[[list[Refusal]], None] | None, keep: int) -> None:
        self.refused: deque[Refusal] = deque(maxlen=keep)
        self.on_refused = on_refused

    def _note(self, refused: list[Refusal]) -> None:
        if not refused:
            return
        log.error(
            "%d audit events refused: %s",
            len(refused),
            "; ".join(f"{r.event.event_id}: {r.reason}" for r in refused[:5]),
        )
        self.refused.extend(refused)
        if self.on_refused is not None:
            try:
                self.on_refused(refused)
            except Exception:  # the application's callback must not stop the sending
                log.exception("on_refused failed")

    def _not_taken(self, exc: AccessError | Undelivered) -> list[Event]:
        """The service took no more (a wrong key, or away): note what it refused before, log
        why, and give back the events not delivered (none when they were spooled)."""
        self._note(exc.refused)
        level = logging.ERROR if isinstance(exc, AccessError) else logging.WARNING
        log.log(level, "%s", _stopped(exc))
        return exc.undelivered


def _handed_back(left: list[Event]) -> list[Event]:
    if left:
        log.error("%d audit events not delivered when the batcher closed: handed back", len(left))
    return left


def _stopped(exc: AccessError | Undelivered) -> str:
    if isinstance(exc, AccessError):
        where = "kept in the spool" if exc.spooled else "kept, tried again"
        return f"audit-ingest answered {exc.status} ({where}): check the key and URL: {exc}"
    return f"audit events not delivered yet: {exc}"


class Batcher(_Refusals):
    """Events from any thread, sent by one background thread through an AuditClient."""

    def __init__(
        self,
        client: AuditClient,
        *,
        max_batch: int = 500,
        linger_s: float = 0.2,
        max_pending: int = 10_000,
        on_refused: Callable[[list[Refusal]], None] | None = None,
    ) -> None:
        super().__init__(on_refused, max_pending)
        self.client = client
        self.max_batch, self.linger_s, self.max_pending = max_batch, linger_s, max_pending
        self._pending: deque[Event] = deque()
        self._in_flight: list[Event] = []  # the batch being sent
        self._lock = threading.Condition()
        self._closed = False
        self._given_up = False  # close() took back what was left: the thread stops
        self._thread = threading.Thread(target=self._run, name="audit-batcher", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def add(self, event: Event) -> None:
        """Queue an event; blocks while max_pending events wait already. TypeError or
        ValueError, naming the field, when JSON cannot carry the event (its details were
        changed after it was made); RuntimeError when the batcher is closed, or closed
        without taking it while it waited for room."""
        event.encode()
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            while len(self._pending) >= self.max_pending and not self._given_up:
                self._lock.wait()
            if self._given_up:
                raise RuntimeError("the batcher closed before it took the event")
            self._pending.append(event)
            self._lock.notify_all()

    def _take(self) -> list[Event] | None:
        with self._lock:
            while not self._pending and not self._closed:
                self._lock.wait()
            if not self._pending or self._given_up:
                return None
            deadline = time.monotonic() + self.linger_s
            while len(self._pending) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            count = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(count)]
            self._in_flight = batch
            self._lock.notify_all()
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            left: list[Event] = []  # to try again
            try:
                self.client.send_many(batch)
            except EventsRefused as exc:  # the others were delivered or spooled
                self._note(exc.refused)
            except (AccessError, Undelivered) as exc:
                left = self._not_taken(exc)
            except Exception as exc:  # anything else (the spool's disk?): keep them
                log.warning("audit events not delivered yet: %s", exc)
                left = batch
            if not self._keep(left):
                return

    def _keep(self, events: list[Event]) -> bool:
        """The batch in flight is done: put its events not delivered back in front and wait
        before the next try; False when close() took back what was left meanwhile."""
        with self._lock:
            self._in_flight = []
            if self._given_up:
                return False
            self._pending.extendleft(reversed(events))
        if events:
            time.sleep(BACKOFF_S)
        return True

    def close(self, timeout_s: float | None = EXIT_TIMEOUT_S) -> list[Event]:
        """Send what is pending (and then the spool), and stop. Waits at most `timeout_s`
        (None: until everything is delivered, spooled or refused); what the service did not
        take by then (a revoked key, the service away without a spool) is handed back,
        returned oldest first and logged by count: the application's to keep. The batch in
        flight is among them and may have been delivered meanwhile: sent again, an event is
        stored once."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = [*self._in_flight, *self._pending]
            self._in_flight, self._given_up = [], True
            self._pending.clear()
            self._lock.notify_all()
        atexit.unregister(self.close)
        if not left and (deadline is None or time.monotonic() < deadline):
            try:
                self.client.flush_spool()  # bounded by the client's retries
            except AccessError as exc:
                log.error("%s", _stopped(exc))
        return _handed_back(left)


class AsyncBatcher(_Refusals):
    """The same for asyncio: one task sends through an AsyncAuditClient."""

    def __init__(
        self,
        client: AsyncAuditClient,
        *,
        max_batch: int = 500,
        linger_s: float = 0.2,
        max_pending: int = 10_000,
        on_refused: Callable[[list[Refusal]], None] | None = None,
    ) -> None:
        super().__init__(on_refused, max_pending)
        self.client = client
        self.max_batch, self.linger_s = max_batch, linger_s
        self._queue: asyncio.Queue[Event] = asyncio.Queue(max_pending)
        self._in_flight: list[Event] = []  # the batch being gathered or sent
        self._closed = False
        self._given_up = False  # close() took back what was left
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def add(self, event: Event) -> None:
        """Queue an event; waits while max_pending events wait already. TypeError or
        ValueError, naming the field, when JSON cannot carry the event; RuntimeError when the
        batcher is closed, or closed without taking it while it waited for room."""
        event.encode()
        if self._closed:
            raise RuntimeError("the batcher is closed")
        await self._queue.put(event)
        if self._given_up:  # close() emptied the queue, then this one found room: not taken
            while not self._queue.empty():
                self._queue.get_nowait()  # each one's add() raises likewise
            raise RuntimeError("the batcher closed before it took the event")

    async def _batch(self) -> list[Event]:
        """The next batch, gathered in `_in_flight` as its events are taken from the queue
        (close() hands back what it holds when its time is up)."""
        batch = self._in_flight = [await self._queue.get()]
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
            taken = len(batch)
            while batch:
                try:
                    await self.client.send_many(batch)
                except EventsRefused as exc:
                    self._note(exc.refused)
                except (AccessError, Undelivered) as exc:
                    batch = self._in_flight = self._not_taken(exc)
                    await asyncio.sleep(BACKOFF_S if batch else 0)
                    continue
                except Exception as exc:  # anything else (the spool's disk?): keep them
                    log.warning("audit events not delivered yet: %s", exc)
                    await asyncio.sleep(BACKOFF_S)
                    continue
                break
            self._in_flight = []
            for _ in range(taken):
                self._queue.task_done()

    async def close(self, timeout_s: float | None = EXIT_TIMEOUT_S) -> list[Event]:
        """As Batcher.close: send what is pending (and then the spool), and stop, within
        `timeout_s` (None: no limit); what was not delivered by then is returned."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._queue.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        left, self._in_flight, self._given_up = self._in_flight, [], True
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        if not left:
            try:
                async with asyncio.timeout_at(deadline):
                    await self.client.flush_spool()
            except AccessError as exc:
                log.error("%s", _stopped(exc))
            except TimeoutError:
                log.warning("the spool was not sent before the batcher closed: it waits on disk")
        return _handed_back(left)
