"""Everything Redis streams: enqueue, read, claim, settle (ack + dead-letter), stats.

Two streams carry events, `high` and `normal`; writers drain `high` first. An entry holds up to
`stream_entry_events` canonical records as one JSON array. A counter beside the streams holds
the number of events accepted and not yet settled: the queue depth that backpressure reads.
All keys of a shard share one hash tag so the Lua scripts stay on one Redis Cluster slot; with
AUDIT_STREAM_SHARDS=N there are N such sets of keys (app.queue.shards). Listing, replaying and
deleting dead letters is in app.queue.dead_letters.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ResponseError

from app.core.service_macs import ServiceMac
from app.events.record import EventRecord

Priority = Literal["high", "normal"]

PRIORITIES: tuple[Priority, ...] = ("high", "normal")

HEARTBEAT_TTL_MS = 30_000

# KEYS: high, normal, depth, dead, persisted, dead-events, queued-by-org, then one dead-letter
#       index per organization (app.queue.dead_letters) named by the items below.
# ARGV: group, n_entries, then per entry: stream index (1|2), id, events, n_orgs, then per
#       organization: name, events; then n_dead, then per dead item: error, payload,
#       deliveries, events, organization, index key (0: none), replays, first failure (a
#       dead-letter id, or '' when this is the first), service key id, MAC (app.core.service_macs).
# An entry another writer already settled (XACK returns 0) is skipped with its dead items, so a
# redelivered entry is counted once. Afterwards, for every accepted event:
#   accepted-total = persisted-total + dead-events + queued-events + discarded-events,
# and queued-by-org holds each organization's queued events. An entry whose MAC fails (changed
# or written in Redis by someone else) is settled as its fields claim, all of it dead-lettered:
# one the API accepted keeps the counts balanced, one it never queued shows as dead-lettered
# events beyond those accepted (the queued count stops at 0).
# Indexing uses pcall: an index entry that cannot be added leaves the item unlisted, never the
# accounting half done.
_SETTLE_LUA = """
local group = ARGV[1]
local n = tonumber(ARGV[2])
local i = 3
local settled = 0
local dead_events = 0
for _ = 1, n do
  local key = KEYS[tonumber(ARGV[i])]
  local id = ARGV[i + 1]
  local events = tonumber(ARGV[i + 2])
  local n_orgs = tonumber(ARGV[i + 3])
  local acked = redis.call('XACK', key, group, id)
  i = i + 4
  for _ = 1, n_orgs do
    if acked == 1 then
      local left = redis.call('HINCRBY', KEYS[7], ARGV[i], -tonumber(ARGV[i + 1]))
      if left <= 0 then redis.call('HDEL', KEYS[7], ARGV[i]) end
    end
    i = i + 2
  end
  local n_dead = tonumber(ARGV[i])
  i = i + 1
  if acked == 1 then
    redis.call('XDEL', key, id)
    settled = settled + events
  end
  for _ = 1, n_dead do
    if acked == 1 then
      local dead_id = redis.call('XADD', KEYS[4], '*', 'source', key, 'id', id,
                                 'org', ARGV[i + 4], 'error', ARGV[i], 'payload', ARGV[i + 1],
                                 'deliveries', ARGV[i + 2], 'events', ARGV[i + 3],
                                 'replays', ARGV[i + 6], 'first', ARGV[i + 7],
                                 'k', ARGV[i + 8], 'm', ARGV[i + 9])
      local index = tonumber(ARGV[i + 5])
      if index > 0 then
        redis.pcall('XADD', KEYS[index], dead_id, 'events', ARGV[i + 3])
      end
      dead_events = dead_events + tonumber(ARGV[i + 3])
    end
    i = i + 10
  end
end
if settled > 0 then
  if redis.call('DECRBY', KEYS[3], settled) < 0 then redis.call('SET', KEYS[3], 0) end
  redis.call('INCRBY', KEYS[5], settled - dead_events)
  redis.call('INCRBY', KEYS[6], dead_events)
end
return settled
"""

# KEYS: high, normal, depth, accepted, queued-by-org. ARGV: total events, n_orgs, then per
# organization: name, events; then per entry: stream index (1|2), events, payload, its
# organizations (JSON), service key id, MAC. One script call, so a request's entries and the
# counts land together or not at all.
_ENQUEUE_LUA = """
local n_orgs = tonumber(ARGV[2])
local i = 3
for _ = 1, n_orgs do
  redis.call('HINCRBY', KEYS[5], ARGV[i], tonumber(ARGV[i + 1]))
  i = i + 2
end
while i <= #ARGV do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'n', ARGV[i + 1], 'e', ARGV[i + 2],
             'o', ARGV[i + 3], 'k', ARGV[i + 4], 'm', ARGV[i + 5])
  i = i + 6
end
redis.call('INCRBY', KEYS[4], tonumber(ARGV[1]))
return redis.call('INCRBY', KEYS[3], tonumber(ARGV[1]))
"""

# KEYS: high, normal. ARGV: group, consumer. Drops the consumer only while it holds nothing.
_LEAVE_LUA = """
for k = 1, 2 do
  local held = redis.call('XPENDING', KEYS[k], ARGV[1], '-', '+', 1, ARGV[2])
  if #held > 0 then return 0 end
end
for k = 1, 2 do
  redis.call('XGROUP', 'DELCONSUMER', KEYS[k], ARGV[1], ARGV[2])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class StreamKeys:
    high: str
    normal: str
    depth: str
    dead: str
    persisted: str
    accepted: str
    dead_events: str
    discarded: str
    heartbeat: str
    roster: str  # the live writers (app.queue.shards); shard 0's is the one used
    queued_by_org: str  # each organization's queued events (quotas), a hash
    dead_bytes: str  # each organization's bytes of dead letters set aside (app.queue.dead_letters)

    @classmethod
    def for_shard(cls, prefix: str, shard: int, shards: int) -> StreamKeys:
        """The keys of one shard: shard 0 keeps the unsharded keys (so events queued before the
        stream was split are still read); shard i > 0 gets a tag whose Redis Cluster slot lies
        in the middle of the i-th of N equal slot ranges after shard 0's, so a cluster whose
        masters hold equal ranges serves each shard from a different master."""
        if shard == 0:
            return cls.for_prefix(prefix)
        return cls.for_prefix(shard_tag(prefix, shard, shards))

    @classmethod
    def for_prefix(cls, prefix: str) -> StreamKeys:
        tag = "{" + prefix + "}"
        return cls(
            high=f"{tag}:events:high",
            normal=f"{tag}:events:normal",
            depth=f"{tag}:queued-events",
            dead=f"{tag}:dead-letter",
            persisted=f"{tag}:persisted-total",
            accepted=f"{tag}:accepted-total",
            dead_events=f"{tag}:dead-lettered-events",
            discarded=f"{tag}:discarded-events",
            heartbeat=f"{tag}:writer-heartbeat",
            roster=f"{tag}:writers",
            queued_by_org=f"{tag}:queued-by-org",
            dead_bytes=f"{tag}:dead-letter-bytes",
        )

    def stream(self, priority: Priority) -> str:
        return self.high if priority == "high" else self.normal

    def dead_index(self, organization: str) -> str:
        """The organization's dead-letter ids, in the dead-letter stream's order."""
        return f"{self.dead}:org:{organization}"


def shard_tag(prefix: str, shard: int, shards: int) -> str:
    """The hash tag of shard `shard` (> 0) of `shards`: `<prefix>-<shard>`, or with a numeric
    suffix, the first whose slot falls in the shard's window. Deterministic, so every process
    derives the same keys."""
    width = REDIS_CLUSTER_HASH_SLOTS // shards
    home = key_slot(("{" + prefix + "}").encode()) // width
    start = ((home + shard) % shards) * width
    low, high = start + width // 4, start + 3 * width // 4
    for suffix in range(100_000):
        tag = f"{prefix}-{shard}" + (f"-{suffix}" if suffix else "")
        if low <= key_slot(("{" + tag + "}").encode()) < high:
            return tag
    raise RuntimeError(f"no hash tag found for shard {shard} of {shards}")


@dataclass(slots=True)
class Entry:
    """One stream entry as a writer received it. A replayed dead letter carries its history:
    deliveries before this entry, replays so far and the id of its first dead letter. The API
    vouched for it with `mac` (key `mac_key`) over its stream, events, `organizations` (raw JSON,
    as queued) and payload; `vouched()` checks that, and `forged` marks one that failed."""

    priority: Priority
    entry_id: str
    payload: bytes
    events: int
    deliveries: int = 1
    earlier_deliveries: int = 0
    replays: int = 0
    first_failed: str = ""
    organizations: bytes = b""
    mac_key: str = ""
    mac: bytes = b""
    forged: bool = False

    def vouched(self, entry_mac: ServiceMac) -> bool:
        """The API queued exactly this entry (its MAC checks)."""
        count = str(self.events).encode()
        parts = (self.priority.encode(), count, self.organizations, self.payload)
        return entry_mac.check(self.mac_key, self.mac, *parts)

    def organization_counts(self) -> dict[str, int]:
        """Its events per organization, as the API counted them (or as a forged entry claims:
        these counts only steer quotas, never what is sealed)."""
        if not self.organizations:
            return {}
        try:
            counts = orjson.loads(self.organizations)
        except orjson.JSONDecodeError:
            return {}
        if not isinstance(counts, dict):
            return {}
        return {k: v for k, v in counts.items() if isinstance(v, int) and v > 0}


@dataclass(frozen=True, slots=True)
class DeadItem:
    """Events the database refused. `organization` is the owner of `payload` ('' when it cannot
    be read): only that organization's admins list, replay or delete the item. `mac` is the
    writer's MAC of it (app.core.service_macs; none for an entry the API did not queue): only an
    item whose MAC checks is replayed."""

    error: str
    payload: bytes
    events: int = 1
    organization: str = ""
    mac_key: str = ""
    mac: bytes = b""


@dataclass(frozen=True, slots=True)
class Settlement:
    """What to record in Redis for one entry once its events are committed or dead-lettered."""

    entry: Entry
    dead: tuple[DeadItem, ...] = ()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _count(fields: dict[bytes, bytes], name: bytes) -> int:
    try:
        return int(fields.get(name, b"0"))
    except ValueError:
        return 0


def entry_age_ms(entry_id: str) -> int:
    """How long ago Redis added the entry (its id starts with the milliseconds)."""
    return max(0, int(time.time() * 1000) - int(entry_id.split("-", 1)[0]))


class EventStream:
    """One shard's streams and counters. `shard` is also the ledger chain its writers seal to."""

    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        group: str,
        entry_mac: ServiceMac,
        shard: int = 0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.entry_mac = entry_mac
        self.shard = shard
        self._settle = client.register_script(_SETTLE_LUA)
        self._enqueue = client.register_script(_ENQUEUE_LUA)
        self._leave = client.register_script(_LEAVE_LUA)

    async def ensure_group(self) -> None:
        for key in (self.keys.high, self.keys.normal):
            try:
                await self.client.xgroup_create(key, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def enqueue(self, records: Sequence[EventRecord], chunk: int) -> None:
        """Append records in entries of at most `chunk`, each with its MAC; all of a request is
        queued, or none."""
        entries: list[Any] = []
        totals: dict[str, int] = {}
        for index, priority in enumerate(PRIORITIES, start=1):
            batch = [r for r in records if r["priority"] == priority]
            for start in range(0, len(batch), chunk):
                part = batch[start : start + chunk]
                counts = Counter(r["organization_id"] for r in part)
                for organization, events in counts.items():
                    totals[organization] = totals.get(organization, 0) + events
                payload = orjson.dumps(part)
                organizations = orjson.dumps(counts, option=orjson.OPT_SORT_KEYS)
                key_id, mac = self.entry_mac.sign(
                    priority.encode(), str(len(part)).encode(), organizations, payload
                )
                entries += [index, len(part), payload, organizations, key_id, mac]
        args: list[Any] = [len(records), len(totals)]
        for organization, events in totals.items():
            args += [organization, events]
        keys = [self.keys.high, self.keys.normal, self.keys.depth, self.keys.accepted]
        await self._enqueue(keys=[*keys, self.keys.queued_by_org], args=args + entries)

    async def queued_by_organization(self) -> dict[str, int]:
        """Each organization's events queued and not yet settled."""
        reply: dict[Any, Any] = await self.client.hgetall(self.keys.queued_by_org)
        return {_text(k): int(v) for k, v in reply.items()}

    async def queued_events(self) -> int:
        value = await self.client.get(self.keys.depth)
        return int(value) if value else 0

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for `consumer`, `high` first; blocks up to `block_ms` when both are empty."""
        entries: list[Entry] = []
        for priority in PRIORITIES:
            if len(entries) >= count:
                break
            reply = await self.client.xreadgroup(
                self.group, consumer, {self.keys.stream(priority): ">"}, count=count - len(entries)
            )
            entries.extend(self._entries(reply))
        if entries or block_ms is None:
            return entries
        reply = await self.client.xreadgroup(
            self.group,
            consumer,
            {self.keys.high: ">", self.keys.normal: ">"},
            count=count,
            block=block_ms,
        )
        return self._entries(reply)

    def _entries(self, reply: Any) -> list[Entry]:
        entries: list[Entry] = []
        for stream_name, items in reply or []:
            priority: Priority = "high" if _text(stream_name) == self.keys.high else "normal"
            for entry_id, fields in items:
                entries.append(self._entry(priority, _text(entry_id), fields))
        return entries

    @staticmethod
    def _entry(priority: Priority, entry_id: str, fields: dict[bytes, bytes]) -> Entry:
        return Entry(
            priority,
            entry_id,
            fields.get(b"e", b""),
            _count(fields, b"n"),
            earlier_deliveries=_count(fields, b"d"),
            replays=_count(fields, b"r"),
            first_failed=_text(fields.get(b"f", b"")),
            organizations=fields.get(b"o", b""),
            mac_key=_text(fields.get(b"k", b"")),
            mac=fields.get(b"m", b""),
        )

    async def claim(
        self, consumer: str, min_idle_ms: int, cursors: dict[Priority, str], count: int
    ) -> list[Entry]:
        """XAUTOCLAIM entries idle too long, with their delivery counts; advances `cursors`."""
        claimed: list[Entry] = []
        for priority in PRIORITIES:
            key = self.keys.stream(priority)
            reply = await self.client.xautoclaim(
                key, self.group, consumer, min_idle_ms, start_id=cursors[priority], count=count
            )
            cursors[priority] = _text(reply[0])
            entries = [self._entry(priority, _text(i), f) for i, f in reply[1] if f is not None]
            if not entries:
                continue
            pending = await self.client.xpending_range(
                key,
                self.group,
                min=entries[0].entry_id,
                max=entries[-1].entry_id,
                count=len(entries) * 2 + 10,
                consumername=consumer,
            )
            deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
            for entry in entries:
                entry.deliveries = deliveries.get(entry.entry_id, entry.deliveries)
            claimed.extend(entries)
        return claimed

    async def settle(self, settlements: Iterable[Settlement]) -> int:
        """Ack (and delete) entries, dead-letter their poison items, update the counters.
        Returns the number of events settled by this call."""
        args: list[Any] = [self.group, 0]
        keys = [
            self.keys.high,
            self.keys.normal,
            self.keys.depth,
            self.keys.dead,
            self.keys.persisted,
            self.keys.dead_events,
            self.keys.queued_by_org,
        ]
        indexes: dict[str, int] = {}
        count = 0
        for item in settlements:
            entry = item.entry
            index = 1 if entry.priority == "high" else 2
            organizations = entry.organization_counts()
            args += [index, entry.entry_id, entry.events, len(organizations)]
            for organization, queued in organizations.items():
                args += [organization, queued]
            args.append(len(item.dead))
            for dead in item.dead:
                org = dead.organization
                if org and org not in indexes:
                    keys.append(self.keys.dead_index(org))
                    indexes[org] = len(keys)
                deliveries = entry.deliveries + entry.earlier_deliveries
                args += [dead.error, dead.payload, deliveries, dead.events, org]
                args += [indexes.get(org, 0), entry.replays, entry.first_failed]
                args += [dead.mac_key, dead.mac]
            count += 1
        args[1] = count
        return int(await self._settle(keys=keys, args=args))

    async def dead_letters(self, count: int = 100) -> list[dict[str, Any]]:
        """The oldest dead-letter entries, with their error (payloads left out)."""
        reply: Any = await self.client.xrange(self.keys.dead, count=count)
        return [
            {
                "id": _text(dead_id),
                "organization": _text(fields.get(b"org", b"")),
                "source": _text(fields[b"source"]),
                "entry_id": _text(fields[b"id"]),
                "error": _text(fields[b"error"]),
                "deliveries": int(fields[b"deliveries"]),
                "events": int(fields[b"events"]),
            }
            for dead_id, fields in reply
        ]

    async def beat(self, consumer: str) -> None:
        await self.client.set(self.keys.heartbeat, consumer, px=HEARTBEAT_TTL_MS)

    async def writer_alive(self) -> bool:
        return bool(await self.client.exists(self.keys.heartbeat))

    async def remove_consumer(self, consumer: str) -> None:
        """Drop a consumer from the group if, atomically checked, it holds nothing pending."""
        await self._leave(keys=[self.keys.high, self.keys.normal], args=[self.group, consumer])

    async def stats(self) -> dict[str, Any]:
        waiting = pending = 0
        consumers: set[str] = set()
        oldest: int | None = None
        for key in (self.keys.high, self.keys.normal):
            for group in await self.client.xinfo_groups(key):
                if _text(group["name"]) != self.group:
                    continue
                waiting += int(group.get("lag") or 0)
                pending += int(group["pending"])
            for info in await self.client.xinfo_consumers(key, self.group):
                consumers.add(_text(info["name"]))
            first = await self.client.xpending_range(key, self.group, min="-", max="+", count=1)
            if first:
                age = entry_age_ms(_text(first[0]["message_id"]))
                oldest = age if oldest is None else max(oldest, age)
        # One MGET: a consistent snapshot of the counters the accounting invariant relates.
        counters = await self.client.mget(
            self.keys.accepted,
            self.keys.persisted,
            self.keys.dead_events,
            self.keys.depth,
            self.keys.discarded,
        )
        accepted, persisted, dead_events, queued, discarded = (int(v) if v else 0 for v in counters)
        return {
            "waiting": waiting,
            "pending": pending,
            "queued_events": queued,
            "dead_letter": await self.client.xlen(self.keys.dead),
            "accepted_total": accepted,
            "persisted_total": persisted,
            "dead_lettered_events": dead_events,
            "discarded_events": discarded,
            "consumers": len(consumers),
            "oldest_pending_age_ms": oldest,
        }


async def eviction_policy(client: redis.Redis) -> str | None:
    """Redis's maxmemory-policy, or None when CONFIG is not allowed (managed services). On a
    Redis Cluster every master is asked; the first one that evicts is named."""
    try:
        if isinstance(client, RedisCluster):
            replies = await client.config_get(
                "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
            )
            policies = [_policy(reply) for reply in replies.values()]
            evicting = [p for p in policies if p is not None and p != "noeviction"]
            return evicting[0] if evicting else "noeviction"
        return _policy(await client.config_get("maxmemory-policy"))
    except ResponseError:
        return None


def _policy(reply: Any) -> str | None:
    for name, value in reply.items():
        if _text(name) == "maxmemory-policy":
            return _text(value)
    return None
