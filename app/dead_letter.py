"""The dead-letter stream as each organization sees it: list, replay, delete.

Every dead item records the organization that owns its payload (app.batch.owner), and settle
(app.stream) adds its id to that organization's index stream, so one organization's items are
paged without reading anyone else's. Items whose owner cannot be read (a corrupt stream entry)
belong to no organization and are left to an operator.

Replay and delete are Lua scripts: an item leaves the dead-letter stream and its events move
from one counter to another in the same step, so at every moment
    accepted-total = persisted-total + dead-events + queued-events + discarded-events.
A replayed item goes back to the stream it came from with its history (deliveries so far,
replays, first failure); the writer then stores it once, or dead-letters it again. Deleted
events are counted as discarded: never stored, and never silently gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from app.stream import EventStream, Priority

_MAX_ID_PART = 2**64 - 1

# KEYS: dead, index, then the script's own. ARGV: organization, then dead-letter ids.
# take(id) removes the item if it is the organization's and returns its fields, else nil.
_TAKE_LUA = """
local function take(id)
  redis.call('XDEL', KEYS[2], id)
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then return nil end
  local fields = {}
  local flat = found[1][2]
  for k = 1, #flat, 2 do fields[flat[k]] = flat[k + 1] end
  if fields['org'] ~= ARGV[1] then return nil end
  redis.call('XDEL', KEYS[1], id)
  return fields
end
local function remaining()
  local left = redis.call('XLEN', KEYS[2])
  if left == 0 then redis.call('DEL', KEYS[2]) end
  return left
end
"""

# KEYS: dead, index, high, normal, depth, dead-events. Returns {events, remaining, {ids}}.
# A dead item holds one record (a JSON object) or a whole entry (a JSON array): the stream
# entry it becomes always holds an array.
_REPLAY_LUA = (
    _TAKE_LUA
    + """
local moved, events = {}, 0
for i = 2, #ARGV do
  local f = take(ARGV[i])
  if f then
    local target = KEYS[4]
    if f['source'] == KEYS[3] then target = KEYS[3] end
    local payload = f['payload']
    if string.sub(payload, 1, 1) ~= '[' then payload = '[' .. payload .. ']' end
    local first = f['first']
    if first == nil or first == '' then first = ARGV[i] end
    redis.call('XADD', target, '*', 'n', f['events'], 'e', payload, 'd', f['deliveries'],
               'r', tonumber(f['replays'] or '0') + 1, 'f', first)
    events = events + tonumber(f['events'])
    moved[#moved + 1] = ARGV[i]
  end
end
if events > 0 then
  redis.call('DECRBY', KEYS[6], events)
  redis.call('INCRBY', KEYS[5], events)
end
return {events, remaining(), moved}
"""
)

# KEYS: dead, index, dead-events, discarded. Returns {events, remaining, {ids}}.
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


def id_time(dead_id: str) -> datetime:
    """When Redis added the item: its id starts with the Unix milliseconds."""
    return datetime.fromtimestamp(int(dead_id.split("-", 1)[0]) / 1000, UTC)


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


class DeadLetters:
    """One organization's view of the dead-letter stream."""

    def __init__(self, stream: EventStream, organization: str) -> None:
        self.client = stream.client
        self.keys = stream.keys
        self.organization = organization
        self.index = stream.keys.dead_index(organization)
        self._replay = self.client.register_script(_REPLAY_LUA)
        self._delete = self.client.register_script(_DELETE_LUA)

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
        )

    async def replay(self, ids: list[str]) -> Outcome:
        """Move the organization's items among `ids` back to their streams, atomically."""
        keys = [self.keys.dead, self.index, self.keys.high, self.keys.normal]
        keys += [self.keys.depth, self.keys.dead_events]
        return _outcome(await self._replay(keys=keys, args=[self.organization, *ids]))

    async def delete(self, ids: list[str]) -> Outcome:
        """Remove the organization's items among `ids`; their events count as discarded."""
        keys = [self.keys.dead, self.index, self.keys.dead_events, self.keys.discarded]
        return _outcome(await self._delete(keys=keys, args=[self.organization, *ids]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _outcome(reply: Any) -> Outcome:
    events, remaining, ids = reply
    return Outcome([_text(i) for i in ids], int(events), int(remaining))
