"""Ingest: a request's body read within its bounds, parsed into validated events, admitted and
queued, all of them or none; what was accepted and what was refused (by its error code) counted.
The HTTP routes and the fast path give it the body as it comes; nothing here knows HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from datetime import UTC, datetime

from prometheus_client import Counter
from redis.exceptions import RedisError

from app.core.caller import Caller
from app.core.config import Settings
from app.core.errors import ApiError, PayloadTooLarge, Unavailable, UnsupportedMediaType
from app.core.limits import Slot, Slots, TooManyLargeRequests
from app.core.timefmt import format_timestamp
from app.events.ids import new_event_ids
from app.events.model import EventIn
from app.events.record import EventRecord
from app.intake.bodies import SMALL_BODY, Limits, limits_of
from app.queue.admission import Admission, admit_and_queue
from app.queue.coalesce import EnqueueBatcher
from app.queue.shards import ShardedStream

Parser = Callable[[bytes, Limits], list[EventIn]]

JSON = ("application/json",)

COALESCE_BELOW = 500  # smaller requests share Lua calls (app.queue.coalesce); larger ones go alone


class Ingest:
    def __init__(
        self,
        settings: Settings,
        stream: ShardedStream,
        enqueuer: EnqueueBatcher,
        admission: Admission,
        large_bodies: Slots,
        accepted: Counter,
        rejected: Counter,
    ) -> None:
        self._limits = limits_of(settings)
        self._max_bytes = settings.max_request_bytes
        self._entry_events = settings.stream_entry_events
        self._stream = stream
        self._enqueuer = enqueuer
        self._admission = admission
        self._large_bodies = large_bodies
        self._accepted = accepted
        self._rejected = rejected

    async def events(
        self,
        caller: Caller,
        content_type: str | None,
        content_length: str | None,
        chunks: AsyncIterable[bytes],
        parse: Parser,
        media_types: tuple[str, ...] = JSON,
    ) -> list[str]:
        """Read the body (of `content_type`, none: the first of `media_types`; and the
        `content_length` its sender declared, if any), parse it with `parse`, and queue its
        events for `caller`; their ids, in order. A large body's slot is held until then."""
        slot = None
        try:
            body, slot = await self._read(caller, content_type, content_length, chunks, media_types)
            return await self._queue(caller, parse(body, self._limits))
        except ApiError as exc:
            self._rejected.labels(reason=exc.code).inc()
            raise
        finally:
            if slot is not None:
                slot.release()

    async def _read(
        self,
        caller: Caller,
        content_type: str | None,
        content_length: str | None,
        chunks: AsyncIterable[bytes],
        media_types: tuple[str, ...],
    ) -> tuple[bytes, Slot | None]:
        """The body, and for one over SMALL_BODY the slot it holds (held until the answer: a
        process reads and parses few large bodies at once, and a key only its share of them)."""
        content_type = media_types[0] if content_type is None else content_type
        if content_type.split(";", 1)[0].strip().lower() not in media_types:
            raise UnsupportedMediaType(f"send events as {' or '.join(media_types)}")
        limit = self._max_bytes
        declared = content_length or ""
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes")
        slot = None
        parts: list[bytes] = []
        size = 0
        try:
            if declared.isdigit() and int(declared) > SMALL_BODY:
                slot = self._large(caller)
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over {limit} bytes")
                if slot is None and size > SMALL_BODY:
                    slot = self._large(caller)
                parts.append(chunk)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        return b"".join(parts), slot

    def _large(self, caller: Caller) -> Slot:
        return self._large_bodies.acquire(
            caller.key_id, caller.organization_id, TooManyLargeRequests
        )

    async def _queue(self, caller: Caller, events: list[EventIn]) -> list[str]:
        """Queue validated events; all of them or, on any refusal, none."""
        org, key_id = caller.organization_id, caller.key_id
        high = any(event.priority == "high" for event in events)

        async def put() -> list[EventRecord]:
            received_at = format_timestamp(datetime.now(UTC))
            fresh = iter(new_event_ids(sum(1 for event in events if event.event_id is None)))
            records = [
                event.to_record(org, received_at, None if event.event_id else next(fresh), key_id)
                for event in events
            ]
            if len(records) < COALESCE_BELOW:
                await self._enqueuer.enqueue(records)
            else:
                await self._stream.enqueue(records, self._entry_events)
            return records

        try:
            records = await admit_and_queue(
                self._admission, key_id, caller.scopes, org, len(events), put, high=high
            )
        except RedisError as exc:
            raise Unavailable(
                "the queue is unreachable; retry later", headers={"Retry-After": "1"}
            ) from exc
        self._accepted.inc(len(records))
        return [record["event_id"] for record in records]
