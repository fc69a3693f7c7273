"""Request bodies prepared ahead from the synthetic population, completed as they are sent.

Serializing events costs far more CPU than the generator may take from the service it shares
the cores with, so bodies are serialized once, into a pool, with a gap where each event's time
goes (and, for single events, its id). Sending a body fills the gaps: the time is the event's age
(drawn with it, whole seconds) before the current second, with the event's own microseconds,
so events are never in the future and never older than the age drawn; the id is a fresh UUIDv7.
Filled gaps are as long as the marks they replace, so a template's length is its body's.

Bulk events carry no event_id (the service gives each accepted copy its own, as before); single
events do (README, Idempotency: a client that retries sends one), which also lets the wrk
script match an answer to its request (loadtests.bench.tools).
"""

from __future__ import annotations

import collections
import functools
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from app.events.ids import new_event_ids
from loadtests.bench.population import PATIENTS, Event, Population

TIME_MARK = b"@" * 19  # as long as "2026-12-04T10:15:30"
ID_MARK = b"@" * 36  # as long as a UUID's text
MAX_AGE_S = 600
BULK_SEED = 1
SINGLE_SEED = 2
# What comes before each gap: the time is an event's first field, after its id when it has one.
BULK_FIRST = b'[{"timestamp":"'
BULK_NEXT = b',{"timestamp":"'
BULK_END = b"]"
SINGLE_HEAD = b'{"event_id":"'
SINGLE_TIME = b'","timestamp":"'


@dataclass(frozen=True, slots=True)
class Template:
    """A body with gaps: `parts` with an empty placeholder where each time and id goes."""

    parts: tuple[bytes, ...]
    times: slice  # where the times go in parts, evenly spaced
    ages: tuple[int, ...]  # seconds before the send, one per time
    ids: tuple[int, ...] = ()  # where ids go

    @property
    def events(self) -> int:
        return len(self.ages)


@dataclass(frozen=True, slots=True)
class BodyPool:
    templates: tuple[Template, ...]

    def writer(self, seed: int | None = None) -> BodyWriter:
        return BodyWriter(self, seed)

    def event_count(self) -> int:
        return sum(t.events for t in self.templates)


class BodyWriter:
    """Fills the pool's templates in turn, from a random one on: one per sending loop."""

    def __init__(self, pool: BodyPool, seed: int | None = None) -> None:
        self.templates = pool.templates
        self.index = random.Random(seed).randrange(len(self.templates))
        self._second = -1
        self._times: list[bytes] = []

    def next_body(self) -> bytes:
        template = self.templates[self.index]
        self.index = (self.index + 1) % len(self.templates)
        return fill(template, self.times())

    def times(self) -> list[bytes]:
        """Time texts by age, for the current second (made again when it changes)."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._times = time_texts(now)
        return self._times


def time_texts(now: int) -> list[bytes]:
    """For every age up to MAX_AGE_S, the UTC second `age` + 1 seconds before `now`: with an
    age of 0 too, the event is in the past whatever its microseconds."""
    return [
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 1 - age)).encode()
        for age in range(MAX_AGE_S + 1)
    ]


def fill(template: Template, times: list[bytes]) -> bytes:
    parts = list(template.parts)
    parts[template.times] = [times[age] for age in template.ages]
    if template.ids:
        fresh = new_event_ids(len(template.ids))
        for position, event_id in zip(template.ids, fresh, strict=True):
            parts[position] = event_id.encode()
    return b"".join(parts)


def event_rest(event: Event, with_id: bool, rng: random.Random) -> bytes:
    """The event as JSON from just after its time's second on (its microseconds first): the
    part of its body that is the same at every send."""
    head: Event = {"event_id": ID_MARK.decode()} if with_id else {}
    head["timestamp"] = f"{TIME_MARK.decode()}.{rng.randrange(1_000_000):06d}Z"
    body = orjson.dumps(head | event)
    before = (SINGLE_HEAD + ID_MARK + SINGLE_TIME if with_id else BULK_FIRST[1:]) + TIME_MARK
    if not body.startswith(before):
        raise ValueError("an event's id and time must be its first fields")
    return body[len(before) :]


def bulk_template(rests: Sequence[bytes], ages: Sequence[int]) -> Template:
    """[{"timestamp":"<time><rest>,{"timestamp":"<time><rest>...]: times at 1, 4, 7..."""
    parts = [BULK_FIRST]
    for rest in rests:
        parts += [b"", rest, BULK_NEXT]
    parts[-1] = BULK_END
    return Template(tuple(parts), slice(1, len(parts) - 1, 3), tuple(ages))


def single_template(rest: bytes, age: int) -> Template:
    """{"event_id":"<id>","timestamp":"<time><rest>"""
    return Template((SINGLE_HEAD, b"", SINGLE_TIME, b"", rest), slice(3, 4), (age,), (1,))


def bulk_age(rng: random.Random) -> int:
    """Seconds before the send: most events a producer batches are seconds old, a few minutes."""
    point = rng.random()
    if point < 0.8:
        return rng.randrange(10)
    if point < 0.98:
        return rng.randrange(10, 60)
    return rng.randrange(60, MAX_AGE_S)


def single_age(rng: random.Random) -> int:
    """Seconds before the send: a single event is sent as it happens, now and then retried."""
    point = rng.random()
    if point < 0.95:
        return 0
    if point < 0.995:
        return rng.randint(1, 5)
    return rng.randrange(6, 60)


@functools.lru_cache(maxsize=2)
def bulk_events(total: int) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
    """The bulk phases' `total` events (each the part after its time) and their ages; bodies
    of any size share them."""
    population = Population(BULK_SEED)
    rng = random.Random(BULK_SEED)
    rests = tuple(event_rest(population.event(), False, rng) for _ in range(total))
    return rests, tuple(bulk_age(rng) for _ in range(total))


@functools.lru_cache(maxsize=4)
def bulk_pool(events_per_request: int, total: int) -> BodyPool:
    """Bodies of `events_per_request` events, about `total` events in all (at least one body)."""
    size = events_per_request
    count = max(1, total // size)
    rests, ages = bulk_events(max(total, size))
    return BodyPool(
        tuple(
            bulk_template(rests[i : i + size], ages[i : i + size])
            for i in range(0, count * size, size)
        )
    )


@functools.lru_cache(maxsize=2)
def single_pool(count: int) -> BodyPool:
    """`count` single-event bodies, each with a gap for its id and one for its time."""
    population = Population(SINGLE_SEED)
    rng = random.Random(SINGLE_SEED)
    return BodyPool(
        tuple(
            single_template(event_rest(population.event(), True, rng), single_age(rng))
            for _ in range(count)
        )
    )


def fixed_body() -> bytes:
    """One event with neither id nor time, for a generator that can only send one body again and
    again (h2load): the service gives each copy its id and time."""
    return orjson.dumps(Population(SINGLE_SEED).event())


def describe(pool: BodyPool) -> dict[str, float]:
    """What a pool holds: bodies, events, distinct patients and principals, and the share of the
    events about a patient that are about the hottest 1% of the patients."""
    text = b"".join(part for t in pool.templates for part in t.parts)
    patients = collections.Counter(re.findall(rb'"patient_id":"([^"]*)"', text))
    principals = set(re.findall(rb'"principal_id":"([^"]*)"', text))
    about = sum(patients.values())
    hottest = sum(n for _, n in patients.most_common(max(1, PATIENTS // 100)))
    return {
        "bodies": len(pool.templates),
        "events": pool.event_count(),
        "patients": len(patients),
        "principals": len(principals),
        "hottest_1pct_share": round(hottest / about, 3) if about else 0.0,
    }
