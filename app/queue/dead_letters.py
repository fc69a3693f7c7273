"""The dead-letter stream as each organization sees it: list, replay, delete.

Every dead item records the organization that owns its payload (app.writer.batch.owner), and settle
(app.queue.stream) adds its id to that organization's index stream, so one organization's items are
paged without reading anyone else's. Items whose owner cannot be read (a corrupt stream entry)
belong to no organization and are left to an operator.

Replay and delete are Lua scripts: an item leaves the dead-letter stream and its events move
from one counter to another in the same step, so at every moment
    accepted-total = persisted-total + dead-events + queued-events + discarded-events.
A replayed item goes back to the stream it came from with its history (deliveries so far,
replays, first failure); the writer then stores it once, or dead-letters it again. Deleted
events are counted as discarded: never stored, and never silently gone.

With stream shards (app.queue.shards) each shard keeps its own dead letters beside its stream; the
API names an item of shard s > 0 `s:<id>` (shard 0's ids are plain stream ids, as unsharded)
and pages through shard 0, then 1, and so on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from app.core.service_macs import ServiceMac, ServiceMacs
from app.queue.shards import ShardedStream
from app.queue.stream import EventStream, Priority

_MAX_ID_PART = 2**64 - 1

# KEYS: dead, index, then the script's own, the last the bytes set aside per organization.
# ARGV: organization, then dead-letter ids. peek(id) returns the item's fields if it is the
# organization's, else nil; take(id) also removes it, and gives back the bytes of an item
# set aside (its field b).
_TAKE_LUA = """
local function peek(id)
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then return nil end
  local fields = {}
  local flat = found[1][2]
  for k = 1, #flat, 2 do fields[flat[k]] = flat[k + 1] end
  if fields['org'] ~= ARGV[1] then return nil end
  return fields
end
local function take(id)
  redis.call('XDEL', KEYS[2], id)
  local fields = peek(id)
  if fields then
    redis.call('XDEL', KEYS[1], id)
    if fields['b'] and redis.call('HINCRBY', KEYS[#KEYS], ARGV[1], -tonumber(fields['b'])) <= 0 then
      redis.call('HDEL', KEYS[#KEYS], ARGV[1])
    end
  end
  return fields
end
local function remaining()
  local left = redis.call('XLEN', KEYS[2])
  if left == 0 then redis.call('DEL', KEYS[2]) end
  return left
end
"""

# KEYS: dead, index, high, normal, depth, dead-events, queued-by-org, dead-bytes. ARGV:
# organization, then
# per item: id, SHA-1 of its payload and its events (as fetched and checked), the entry's
# payload (always an array), organizations and MAC key id and MAC (app.core.service_macs). Returns
# {events, remaining, {ids}}. An item that changed since it was checked stays where it is.
_REPLAY_LUA = (
    _TAKE_LUA
    + """
local moved, events = {}, 0
local i = 2
while i <= #ARGV do
  local f = peek(ARGV[i])
  if f and redis.sha1hex(f['payload']) == ARGV[i + 1] and f['events'] == ARGV[i + 2] then
    take(ARGV[i])
    local target = KEYS[4]
    if f['source'] == KEYS[3] then target = KEYS[3] end
    local first = f['first']
    if first == nil or first == '' then first = ARGV[i] end
    redis.call('XADD', target, '*', 'n', f['events'], 'e', ARGV[i + 3], 'o', ARGV[i + 4],
               'k', ARGV[i + 5], 'm', ARGV[i + 6], 'd', f['deliveries'],
               'r', tonumber(f['replays'] or '0') + 1, 'f', first)
    redis.call('HINCRBY', KEYS[7], ARGV[1], tonumber(f['events']))
    events = events + tonumber(f['events'])
    moved[#moved + 1] = ARGV[i]
  end
  i = i + 7
end
if events > 0 then
  redis.call('DECRBY', KEYS[6], events)
  redis.call('INCRBY', KEYS[5], events)
end
return {events, remaining(), moved}
"""
)

# KEYS: dead, index, dead-events, discarded, dead-bytes. Returns {events, remaining, {ids}}.
_DELETE_LUA = (
    _TAKE_LUA
    + """
local removed, events = {}, 0
for i = 2, #ARGV do
  local f = take(ARGV[i])
  if f then
    events = events + tonumber(f['events'])
    removed[#removed + 1] = ARGV[i]
  end
end
if events > 0 then
  redis.call('DECRBY', KEYS[3], events)
  redis.call('INCRBY', KEYS[4], events)
end
return {events, remaining(), removed}
"""
)

# At most this many items in one replay or delete: its audit record names each of them.
MOST_SELECTED = 500


# KEYS: dead, index, dead-events, accepted, dead-bytes. ARGV: source stream, organization,
# error, payload, events, MAC key id, MAC, then the caps (-1: none): the most items the
# organization may hold, how many it holds in other shards, the most bytes of items set aside
# it may hold. An item set aside before it reached the stream (app.intake.syslog.intake) is taken
# into custody and dead-lettered in one step, so the counts stay balanced; over a cap nothing
# is added and the answer is nil. The check and the add are one step: senders on many
# connections, or in many processes, cannot together go past a cap.
_SET_ASIDE_LUA = """
local size = string.len(ARGV[4])
local max_items, max_bytes = tonumber(ARGV[8]), tonumber(ARGV[10])
if max_items >= 0 and redis.call('XLEN', KEYS[2]) + tonumber(ARGV[9]) >= max_items then
  return false
end
if max_bytes >= 0 and tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0') + size > max_bytes then
  return false
end
local dead_id = redis.call('XADD', KEYS[1], '*', 'source', ARGV[1], 'id', '', 'org', ARGV[2],
                           'error', ARGV[3], 'payload', ARGV[4], 'deliveries', 0,
                           'events', ARGV[5], 'replays', 0, 'first', '',
                           'k', ARGV[6], 'm', ARGV[7], 'b', size)
redis.call('XADD', KEYS[2], dead_id, 'events', ARGV[5])
redis.call('HINCRBY', KEYS[5], ARGV[2], size)
redis.call('INCRBY', KEYS[3], tonumber(ARGV[5]))
redis.call('INCRBY', KEYS[4], tonumber(ARGV[5]))
return dead_id
"""


def id_time(dead_id: str) -> datetime:
    """When Redis added the item: its id (after any shard) starts with the Unix milliseconds."""
    return datetime.fromtimestamp(int(split_id(dead_id)[1].split("-", 1)[0]) / 1000, UTC)


def split_id(dead_id: str) -> tuple[int, str]:
    """(shard, stream id) of an API dead-letter id."""
    shard, sep, raw = dead_id.partition(":")
    return (int(shard), raw) if sep else (0, dead_id)


def join_id(shard: int, raw: str) -> str:
    return f"{shard}:{raw}" if shard else raw


def event_ids(payload: bytes) -> list[str]:
    """The ids of the records a dead item holds (one object, or an array of them)."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    records = value if isinstance(value, list) else [value]
    return [
        r["event_id"] for r in records if isinstance(r, dict) and isinstance(r.get("event_id"), str)
    ]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    source: Priority
    error: str
    deliveries: int
    replays: int
    events: int
    first_failed: datetime
    payload: bytes
    mac_key: str = ""
    mac: bytes = b""

    def vouched(self, dead_letter_mac: ServiceMac, organization: str) -> bool:
        """A writer set this item aside from an entry the API queued (its MAC checks)."""
        parts = (organization.encode(), str(self.events).encode(), self.payload)
        return dead_letter_mac.check(self.mac_key, self.mac, *parts)

    @property
    def failed_at(self) -> datetime:
        return id_time(self.id)

    @property
    def event_ids(self) -> list[str]:
        return event_ids(self.payload)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a replay or delete did: the ids it moved, their events, the organization's items
    left in the dead-letter stream."""

    ids: list[str]
    events: int
    remaining: int
    refused: list[str] = field(default_factory=list)  # not vouched for: never replayed


class DeadLetters:
    """One organization's view of the dead letters of every shard."""

    def __init__(self, stream: ShardedStream, organization: str, macs: ServiceMacs) -> None:
        self.parts = [ShardDeadLetters(shard, organization, macs) for shard in stream.shards]

    async def page(self, after: str | None, limit: int) -> tuple[list[DeadLetter], str | None]:
        """Up to `limit` items after the id `after`, shard by shard, oldest first within each,
        and the next page's cursor."""
        shard, raw = split_id(after) if after else (0, None)
        letters: list[DeadLetter] = []
        while shard < len(self.parts):
            found, more = await self.parts[shard].page(raw, limit - len(letters))
            letters += [replace(letter, id=join_id(shard, letter.id)) for letter in found]
            if more is not None:
                return letters, join_id(shard, more)
            if len(letters) >= limit:  # filled by this shard: the next page starts past it
                return letters, join_id(shard, found[-1].id)
            shard, raw = shard + 1, None
        return letters, None

    async def count(self) -> int:
        """The organization's items in every shard's dead-letter stream."""
        return sum([await part.left() for part in self.parts])

    async def first_ids(self, count: int) -> list[str]:
        ids: list[str] = []
        for shard, part in enumerate(self.parts):
            if len(ids) >= count:
                break
            ids += [join_id(shard, raw) for raw in await part.first_ids(count - len(ids))]
        return ids

    def _by_shard(self, ids: list[str]) -> dict[int, list[str]]:
        grouped: dict[int, list[str]] = {}
        for dead_id in ids:
            shard, raw = split_id(dead_id)
            if shard < len(self.parts):  # an id of no shard is simply not found
                grouped.setdefault(shard, []).append(raw)
        return grouped

    async def fetch(self, ids: list[str]) -> list[DeadLetter]:
        """The organization's items among `ids`, in that order; others are left out."""
        found: dict[str, DeadLetter] = {}
        for shard, raws in self._by_shard(ids).items():
            for letter in await self.parts[shard].fetch(raws):
                joined = join_id(shard, letter.id)
                found[joined] = replace(letter, id=joined)
        return [found[dead_id] for dead_id in ids if dead_id in found]

    async def set_aside(
        self,
        error: str,
        payload: bytes,
        *,
        vouched: bool,
        source: Priority = "normal",
        max_items: int | None = None,
        max_bytes: int | None = None,
    ) -> str | None:
        """Dead-letter one item that never reached the stream (app.intake.syslog.intake): a
        message that could not be used, or an event read when the receiver stopped. Only a
        `vouched` item (the payload is a record the service validated) is MAC'd and so can be
        replayed. Returns its id; None when it would make the organization hold `max_items`
        dead letters or more, or over `max_bytes` of items set aside (checked and added in one
        step, against what other shards hold too)."""
        elsewhere = 0
        if max_items is not None:
            elsewhere = sum([await part.left() for part in self.parts[1:]])
        return await self.parts[0].set_aside(
            error,
            payload,
            vouched=vouched,
            source=source,
            caps=(max_items, elsewhere, max_bytes),
        )

    async def replay(self, letters: list[DeadLetter]) -> Outcome:
        """Move the organization's items back to their streams, atomically per shard; items
        the writers did not vouch for are refused."""
        by_id = {letter.id: letter for letter in letters}
        return await self._each(list(by_id), replay=by_id)

    async def delete(self, ids: list[str]) -> Outcome:
        """Remove the organization's items among `ids`; their events count as discarded."""
        return await self._each(ids, replay=None)

    async def _each(self, ids: list[str], *, replay: dict[str, DeadLetter] | None) -> Outcome:
        moved: list[str] = []
        refused: list[str] = []
        events = remaining = 0
        grouped = self._by_shard(ids)
        for shard, part in enumerate(self.parts):
            raws = grouped.get(shard)
            if not raws:
                remaining += await part.left()
                continue
            if replay is None:
                done = await part.delete(raws)
            else:
                mine = [replace(replay[join_id(shard, raw)], id=raw) for raw in raws]
                done = await part.replay(mine)
            moved += [join_id(shard, raw) for raw in done.ids]
            refused += [join_id(shard, raw) for raw in done.refused]
            events += done.events
            remaining += done.remaining
        return Outcome(moved, events, remaining, refused)


class ShardDeadLetters:
    """One organization's view of one shard's dead-letter stream."""

    def __init__(self, stream: EventStream, organization: str, macs: ServiceMacs) -> None:
        self.client = stream.client
        self.keys = stream.keys
        self.organization = organization
        self.macs = macs
        self.index = stream.keys.dead_index(organization)
        self._replay = self.client.register_script(_REPLAY_LUA)
        self._delete = self.client.register_script(_DELETE_LUA)
        self._set_aside = self.client.register_script(_SET_ASIDE_LUA)

    async def set_aside(
        self,
        error: str,
        payload: bytes,
        *,
        vouched: bool,
        source: Priority = "normal",
        caps: tuple[int | None, int, int | None] = (None, 0, None),
    ) -> str | None:
        """Dead-letter one item of the organization that never reached the stream, counted as
        accepted and dead-lettered (`DeadLetters.set_aside`); `caps` are the most items, the
        items held in other shards and the most bytes set aside. None when over a cap."""
        key_id, mac = "", b""
        if vouched:
            key_id, mac = self.macs.dead_letters.sign(self.organization.encode(), b"1", payload)
        keys = [self.keys.dead, self.index, self.keys.dead_events, self.keys.accepted]
        keys.append(self.keys.dead_bytes)
        max_items, elsewhere, max_bytes = caps
        args: list[Any] = [self.keys.stream(source), self.organization, error, payload, 1]
        args += [key_id, mac, -1 if max_items is None else max_items, elsewhere]
        args.append(-1 if max_bytes is None else max_bytes)
        dead_id = await self._set_aside(keys=keys, args=args)
        return None if dead_id is None else _text(dead_id)

    async def page(self, after: str | None, limit: int) -> tuple[list[DeadLetter], str | None]:
        """Up to `limit` items after the id `after`, oldest first, and the next page's cursor."""
        if after and all(int(part) == _MAX_ID_PART for part in after.split("-")):
            return [], None  # nothing follows the last possible id (and Redis refuses to look)
        start = f"({after}" if after else "-"
        reply: Any = await self.client.xrange(self.index, min=start, max="+", count=limit + 1)
        ids = [_text(dead_id) for dead_id, _ in reply]
        more = len(ids) > limit
        ids = ids[:limit]
        return await self.fetch(ids), ids[-1] if more else None

    async def first_ids(self, count: int) -> list[str]:
        reply: Any = await self.client.xrange(self.index, min="-", max="+", count=count)
        return [_text(dead_id) for dead_id, _ in reply]

    async def left(self) -> int:
        """The organization's items in this shard's dead-letter stream."""
        return int(await self.client.xlen(self.index))

    async def fetch(self, ids: list[str]) -> list[DeadLetter]:
        """The organization's items among `ids`, in that order; others are left out."""
        if not ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for dead_id in ids:
                pipe.xrange(self.keys.dead, min=dead_id, max=dead_id)
            replies: list[Any] = await pipe.execute()
        letters = []
        for found in replies:
            if found:
                letter = self._letter(_text(found[0][0]), found[0][1])
                if letter is not None:
                    letters.append(letter)
        return letters

    def _letter(self, dead_id: str, fields: dict[bytes, bytes]) -> DeadLetter | None:
        if _text(fields.get(b"org", b"")) != self.organization:
            return None
        first = _text(fields.get(b"first", b"")) or dead_id
        return DeadLetter(
            id=dead_id,
            source="high" if _text(fields.get(b"source", b"")) == self.keys.high else "normal",
            error=_text(fields.get(b"error", b"")),
            deliveries=int(fields.get(b"deliveries", b"0")),
            replays=int(fields.get(b"replays", b"0")),
            events=int(fields.get(b"events", b"0")),
            first_failed=id_time(first),
            payload=fields.get(b"payload", b""),
            mac_key=_text(fields.get(b"k", b"")),
            mac=fields.get(b"m", b""),
        )

    async def replay(self, letters: list[DeadLetter]) -> Outcome:
        """Move the organization's items back to their streams, atomically, each as an entry
        the API vouches for; an item without the writers' MAC is refused and stays."""
        args: list[Any] = [self.organization]
        refused = []
        for letter in letters:
            if not letter.vouched(self.macs.dead_letters, self.organization):
                refused.append(letter.id)
                continue
            args += [letter.id, hashlib.sha1(letter.payload).hexdigest(), str(letter.events)]
            args += self._entry_fields(letter)
        keys = [self.keys.dead, self.index, self.keys.high, self.keys.normal]
        keys += [self.keys.depth, self.keys.dead_events, self.keys.queued_by_org]
        keys.append(self.keys.dead_bytes)
        done = _outcome(await self._replay(keys=keys, args=args))
        return replace(done, refused=refused)

    def _entry_fields(self, letter: DeadLetter) -> list[Any]:
        """The payload, organizations, key id and MAC of the entry the item becomes."""
        payload = letter.payload
        if not payload.startswith(b"["):
            payload = b"[" + payload + b"]"
        organizations = orjson.dumps({self.organization: letter.events})
        key_id, mac = self.macs.entries.sign(
            letter.source.encode(), str(letter.events).encode(), organizations, payload
        )
        return [payload, organizations, key_id, mac]

    async def delete(self, ids: list[str]) -> Outcome:
        """Remove the organization's items among `ids`; their events count as discarded."""
        keys = [self.keys.dead, self.index, self.keys.dead_events, self.keys.discarded]
        keys.append(self.keys.dead_bytes)
        return _outcome(await self._delete(keys=keys, args=[self.organization, *ids]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _outcome(reply: Any) -> Outcome:
    events, remaining, ids = reply
    return Outcome([_text(i) for i in ids], int(events), int(remaining))
