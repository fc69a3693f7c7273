"""The load driver: clients that send bulk and single events with their own event ids (uuid4 or
uuid7) and explicit timestamps, remember every id answered 202 (and when), and resend the same
bytes, so the same ids, after a 503 or a connection error, as a real client would: on the next
API in the list, after Retry-After, bounded by attempts and time."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from app.schemas import new_event_id

POISON_PREFIX = "faults-poison-"


@dataclass(frozen=True)
class LoadPlan:
    clients: int = 4
    events_per_s: float = 2000.0
    max_bulk: int = 200
    single_share: float = 0.2  # requests that are POST /events
    poison_every: int = 0  # every n-th request carries an event the database refuses
    conflict_every: int = 0  # every n-th request resends an accepted id with other content
    max_attempts: int = 200
    retry_window_s: float = 60.0
    timeout_s: float = 10.0


@dataclass
class Tally:
    """What the clients sent and what the service acknowledged."""

    sent: set[str] = field(default_factory=set)
    accepted_at: dict[str, float] = field(default_factory=dict)  # id -> monotonic time of 202
    poison: set[str] = field(default_factory=set)
    conflicts_sent: set[str] = field(default_factory=set)  # ids resent with other content
    conflicts: set[str] = field(default_factory=set)  # ... and answered 202
    answers: Counter[str] = field(default_factory=Counter)  # "202", "503 queue_full", ...
    refused: set[str] = field(default_factory=set)  # answered neither 202 nor 503
    gave_up: set[str] = field(default_factory=set)  # retries exhausted without a 202
    misanswered: set[str] = field(default_factory=set)  # a 202 naming other ids than sent

    def accept(self, ids: list[str], at: float) -> None:
        for event_id in ids:
            self.accepted_at.setdefault(event_id, at)

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.accepted_at.values() if start <= at < end)


def event_body(n: int, principal: str) -> dict[str, Any]:
    event_id = str(uuid.uuid4()) if n % 2 else new_event_id()
    return {
        "event_id": event_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "action": "fhir.patient.read" if n % 3 else "auth.login",
        "status": ("success", "failure", "attempt")[n % 3],
        "principal_id": principal,
        "principal_type": "practitioner",
        "patient_id": f"p-{n % 997}",
        "data_classification": "PHI" if n % 4 else "INTERNAL",
        "target_resource_type": "Patient",
        "details": {"n": n, "fields": ["name", "dob"]},
        "priority": "high" if n % 10 == 0 else "normal",
    }


class LoadDriver:
    def __init__(self, urls: list[str], key: str, plan: LoadPlan) -> None:
        self.urls = urls
        self.plan = plan
        self.tally = Tally()
        self.open_requests: Counter[str] = Counter()  # API url -> requests sent, not answered
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._counter = 0
        self._last_accepted: dict[str, Any] | None = None

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
        if plan.conflict_every and n % plan.conflict_every == 0 and self._last_accepted:
            copy = dict(self._last_accepted, principal_id=f"faults-conflict-{n}")
            return "/events", [copy]
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
        (self.tally.conflicts_sent if conflict else self.tally.sent).update(ids)
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
        self.tally.accept(ids, time.monotonic())
        good = [e for e in events if e["event_id"] not in self.tally.poison]
        self._last_accepted = good[-1] if good else self._last_accepted

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
