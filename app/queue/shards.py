"""The event stream split over N shards (AUDIT_STREAM_SHARDS), and which writer serves which.

Each shard is a full set of stream keys under its own hash tag
(app.queue.stream.StreamKeys.for_shard), so on Redis Cluster each shard lives on one slot and
different shards on different masters. A request's events go to one shard, in turn (one Lua call, so
a request is still queued whole or not at all). Shard c's writers seal into ledger chain c
(app.ledger.seal), so shards never wait on each other's chain lock. With one shard (the default)
nothing here costs anything: every writer serves shard 0 and no roster is kept.

Writers claim shards through a roster: a sorted set of live writer names, each with an expiry
refreshed while it runs. A writer of rank r among M live writers serves the shards s with
s mod M == r (when M <= N), or shard r mod N (when M > N, so several writers share a shard).
Every shard is served while any writer lives; when writers come and go the assignment moves,
and for a moment two writers may serve one shard, which the consumer group and the chain lock
make harmless. Entries a writer held when it died are reclaimed by the shard's next writer.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis

from app.core.service_macs import ServiceMac
from app.events.record import EventRecord
from app.queue.stream import EventStream, StreamKeys

ROSTER_TTL_MS = 15_000

_SUMMED = (
    "waiting",
    "pending",
    "queued_events",
    "dead_letter",
    "accepted_total",
    "persisted_total",
    "dead_lettered_events",
    "discarded_events",
    "consumers",
)


def assigned_shards(rank: int, writers: int, shards: int) -> list[int]:
    """The shards the writer of `rank` among `writers` live ones serves."""
    if writers <= 0 or not 0 <= rank < writers:
        return []
    if writers <= shards:
        return [s for s in range(shards) if s % writers == rank]
    return [rank % shards]


class ShardedStream:
    """The N shards as one queue: enqueue spreads requests, reads of state sum over shards."""

    def __init__(
        self, client: redis.Redis, prefix: str, group: str, entry_mac: ServiceMac, shards: int = 1
    ) -> None:
        if shards < 1:
            raise ValueError("a stream has at least one shard")
        self.client = client
        self.shards = [
            EventStream(client, StreamKeys.for_shard(prefix, i, shards), group, entry_mac, shard=i)
            for i in range(shards)
        ]
        self.roster_key = self.shards[0].keys.roster
        self._turn = itertools.count()

    def next_shard(self) -> EventStream:
        if len(self.shards) == 1:
            return self.shards[0]
        return self.shards[next(self._turn) % len(self.shards)]

    async def ensure_group(self) -> None:
        for shard in self.shards:
            await shard.ensure_group()

    async def enqueue(self, records: Sequence[EventRecord], chunk: int) -> None:
        await self.next_shard().enqueue(records, chunk)

    async def queued_events(self) -> int:
        total = 0
        for shard in self.shards:
            total += await shard.queued_events()
        return total

    async def queued_by_organization(self) -> dict[str, int]:
        """Each organization's queued events, over every shard."""
        total: dict[str, int] = {}
        for shard in self.shards:
            for organization, events in (await shard.queued_by_organization()).items():
                total[organization] = total.get(organization, 0) + events
        return total

    async def writer_alive(self) -> bool:
        """Every shard has a writer that read from it lately."""
        for shard in self.shards:
            if not await shard.writer_alive():
                return False
        return True

    async def stats(self) -> dict[str, Any]:
        parts = [await shard.stats() for shard in self.shards]
        total: dict[str, Any] = {name: sum(p[name] for p in parts) for name in _SUMMED}
        ages = [p["oldest_pending_age_ms"] for p in parts if p["oldest_pending_age_ms"] is not None]
        total["oldest_pending_age_ms"] = max(ages) if ages else None
        total["shards"] = len(parts)
        return total

    # -- the writers' roster ------------------------------------------------------------------

    async def roster(self, name: str) -> list[int]:
        """Refresh `name` in the roster and return the shards it serves now."""
        if len(self.shards) == 1:
            return [0]
        now_ms = int(time.time() * 1000)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.roster_key, {name: now_ms + ROSTER_TTL_MS})
            pipe.zremrangebyscore(self.roster_key, "-inf", now_ms)
            pipe.zrange(self.roster_key, 0, -1)
            replies: list[Any] = await pipe.execute()
        live = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in replies[2])
        rank = live.index(name) if name in live else -1
        return assigned_shards(rank, len(live), len(self.shards))

    async def leave_roster(self, name: str) -> None:
        if len(self.shards) > 1:
            await self.client.zrem(self.roster_key, name)
