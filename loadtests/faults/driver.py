"""The load driver: clients that send bulk and single events with their own event ids (uuid4 or
uuid7) and explicit timestamps, remember what each event said (a digest) and every id answered
202 (and when), and resend the same
bytes, so the same ids, after a 503 or a connection error, as a real client would: on the next
API in the list, after Retry-After, bounded by attempts and time."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson

from app.events.ids import new_event_id
from loadtests.faults.content import digest, sent_content

POISON_PREFIX = "faults-poison-"


@dataclass(frozen=True)
class LoadPlan:
    clients: int = 4
    events_per_s: float = 2000.0
    max_bulk: int = 200
    single_share: float = 0.2  # requests that are POST /events
    poison_every: int = 0  # every n-th request carries an event the database refuses
    conflict_every: int = 0  # every n-th request resends an accepted id with other content
    conflict_age_s: float = 2.0  # ... one acknowledged at least this long ago (stored by then)
    max_attempts: int = 200
    retry_window_s: float = 60.0
    timeout_s: float = 10.0


@dataclass
class Tally:
    """What the clients sent and what the service acknowledged."""

    sent: dict[str, bytes] = field(default_factory=dict)  # id -> digest of what was sent
    accepted_at: dict[str, float] = field(default_factory=dict)  # id -> monotonic time of 202
    poison: set[str] = field(default_factory=set)
    conflicts_sent: set[str] = field(default_factory=set)  # ids resent with other content
    conflicts: set[str] = field(default_factory=set)  # ... and answered 202
    answers: Counter[str] = field(default_factory=Counter)  # "202", "503 queue_full", ...
    refused: set[str] = field(default_factory=set)  # answered neither 202 nor 503
    gave_up: set[str] = field(default_factory=set)  # retries exhausted without a 202
    misanswered: set[str] = field(default_factory=set)  # a 202 naming other ids than sent

    def send(self, events: list[dict[str, Any]]) -> None:
        """Remember what these events say (their first sending: a conflicting resend of an id
        is counted in `conflicts_sent` instead, and its original content stays the one owed)."""
        for event in events:
            self.sent.setdefault(event["event_id"], digest(sent_content(event)))

    def accept(self, ids: list[str], at: float) -> None:
        for event_id in ids:
            self.accepted_at.setdefault(event_id, at)

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.accepted_at.values() if start <= at < end)


OFFSETS = (UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30)))


def event_body(n: int, principal: str) -> dict[str, Any]:
    """An event that uses every field a client may send, some now and then and some left to
    the service's defaults, its time written in one of several offsets."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()) if n % 2 else new_event_id(),
        "timestamp": datetime.now(OFFSETS[n % len(OFFSETS)]).isoformat(),
        "action": "fhir.patient.read" if n % 3 else "auth.login",
        "status": ("success", "failure", "attempt")[n % 3],
        "principal_id": principal,
        "principal_type": "practitioner",
        "patient_id": f"p-{n % 997}",
        "target_resource_type": "Patient",
        "target_resource_id": f"Patient/p-{n % 997}",
        "details": {"n": n, "fields": ["name", "dob"], "seen": {"z": n % 7, "a": "x"}},
    }
    if n % 4:
        event["data_classification"] = "PHI"  # else INTERNAL, the default
    if n % 10 == 0:
        event["priority"] = "high"
    if n % 5 == 0:
        event["purpose_of_use"] = "TREAT"
        event["break_glass"] = True
        event["outcome_description"] = "emergency access"
        event["correlation_id"] = f"c-{n}"
    if n % 3 == 0:
        address = f"10.0.{n % 256}.{n % 7}" if n % 2 else f"2001:db8::{n % 4096:x}"
        event["session_context"] = {
            "session_id": f"s-{n % 101}",
            "ip_address": address,
            "user_agent": "faults/1.0",
        }
    return event


class LoadDriver:
    def __init__(self, urls: list[str], key: str, plan: LoadPlan) -> None:
        self.urls = urls
        self.plan = plan
        self.tally = Tally()
        self.open_requests: Counter[str] = Counter()  # API url -> requests sent, not answered
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._counter = 0
        self._resendable: deque[tuple[float, dict[str, Any]]] = deque()  # (202 time, event)

    async def run(self, stop: asyncio.Event, max_s: float) -> None:
        """Clients send until `stop` is set (or `max_s`); returns once their retries end."""
        limits = httpx.Limits(max_connections=self.plan.clients * 2)
        timeout = httpx.Timeout(self.plan.timeout_s)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            until = time.monotonic() + max_s
            await asyncio.gather(
                *(self._client(i, client, stop, until) for i in range(self.plan.clients))
            )

    async def _client(
        self, index: int, client: httpx.AsyncClient, stop: asyncio.Event, until: float
    ) -> None:
        share = self.plan.events_per_s / self.plan.clients
        while not stop.is_set() and time.monotonic() < until:
            started = time.monotonic()
            path, events = self._next_request()
            await self._deliver(client, index, path, events)
            pause = len(events) / share - (time.monotonic() - started)
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)

    def _next_request(self) -> tuple[str, list[dict[str, Any]]]:
        self._counter += 1
        n, plan = self._counter, self.plan
        if plan.conflict_every and n % plan.conflict_every == 0:
            original = self._settled_event()
            if original is not None:
                return "/events", [dict(original, principal_id=f"faults-conflict-{n}")]
        single = random.random() < plan.single_share
        size = 1 if single else random.randint(2, plan.max_bulk)
        events = [event_body(n * 1000 + i, f"faults-user-{(n + i) % 50}") for i in range(size)]
        if plan.poison_every and n % plan.poison_every == 0:
            events[random.randrange(size)]["principal_id"] = f"{POISON_PREFIX}{n}"
        return ("/events" if single else "/events/bulk"), events

    async def _deliver(
        self, client: httpx.AsyncClient, index: int, path: str, events: list[dict[str, Any]]
    ) -> None:
        ids = [e["event_id"] for e in events]
        conflict = any(e["principal_id"].startswith("faults-conflict-") for e in events)
        poison = [e["event_id"] for e in events if e["principal_id"].startswith(POISON_PREFIX)]
        if conflict:
            self.tally.conflicts_sent.update(ids)
        else:
            self.tally.send(events)
        self.tally.poison.update(poison)
        body = orjson.dumps(events[0] if path == "/events" else events)
        resp = await self._post_until_done(client, index, path, body)
        if resp is None or resp.status_code != 202:
            if not conflict:
                (self.tally.gave_up if resp is None else self.tally.refused).update(ids)
            return
        if answered_ids(resp) != ids:
            self.tally.misanswered.update(ids)
        if conflict:
            self.tally.conflicts.update(ids)
            return
        accepted_at = time.monotonic()
        self.tally.accept(ids, accepted_at)
        good = [e for e in events if e["event_id"] not in self.tally.poison]
        if good and self.plan.conflict_every:
            self.remember_accepted(good[-1], accepted_at)

    def remember_accepted(self, event: dict[str, Any], at: float) -> None:
        """An event answered 202 at `at` (in time order), to resend later with other content."""
        self._resendable.append((at, event))

    def _settled_event(self) -> dict[str, Any] | None:
        """The newest event acknowledged at least `conflict_age_s` ago, taken (so each is
        resent once), with those older still dropped; None when there is none yet. Resent any
        sooner, the other content may reach the database first: another writer may take the
        resend while the original's batch is still on its way, and the first stored stays."""
        cutoff = time.monotonic() - self.plan.conflict_age_s
        chosen = None
        while self._resendable and self._resendable[0][0] <= cutoff:
            chosen = self._resendable.popleft()[1]
        return chosen

    async def _post_until_done(
        self, client: httpx.AsyncClient, index: int, path: str, body: bytes
    ) -> httpx.Response | None:
        """The 202, or the answer that refuses for good; None when the retries ran out."""
        deadline = time.monotonic() + self.plan.retry_window_s
        for attempt in range(self.plan.max_attempts):
            url = self.urls[(index + attempt) % len(self.urls)]
            try:
                resp = await self._post(client, url, path, body)
            except httpx.TransportError as exc:
                self.tally.answers[type(exc).__name__] += 1
                wait = 0.2
            else:
                self.tally.answers[answer_label(resp)] += 1
                if resp.status_code != 503:
                    return resp
                wait = float(resp.headers.get("Retry-After", "1"))
            wait *= random.uniform(0.5, 1.0)
            if time.monotonic() + wait > deadline:
                break
            await asyncio.sleep(wait)
        return None

    async def _post(
        self, client: httpx.AsyncClient, url: str, path: str, body: bytes
    ) -> httpx.Response:
        """One POST, counted open on its API until it is answered or fails."""
        self.open_requests[url] += 1
        try:
            return await client.post(url + path, content=body, headers=self._headers)
        finally:
            self.open_requests[url] -= 1


def answered_ids(resp: httpx.Response) -> list[str]:
    """The event ids a 202 names (a bulk answer lists them, a single one names one)."""
    body = resp.json()
    return [str(i) for i in body["event_ids"]] if "event_ids" in body else [body["event_id"]]


def answer_label(resp: httpx.Response) -> str:
    if resp.status_code == 202:
        return "202"
    try:
        code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "?"
    return f"{resp.status_code} {code}"
