"""Sync and async clients: retries with backoff and jitter that honour Retry-After, and a disk
spool for what cannot be delivered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from audit_ingest_client._event import Event

MAX_BULK = 1000  # events per request (the service takes up to 10,000)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class AuditError(Exception):
    """The service refused the events for good (a 4xx other than 429): resending cannot help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"audit-ingest answered {status}: {body[:500]}")
        self.status = status
        self.body = body


class Undelivered(Exception):
    """The events could not be delivered within the retries, and there is no spool."""


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 6
    base_s: float = 0.2
    max_s: float = 10.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter on an exponential window, never less than what Retry-After asked."""
        window = min(self.max_s, self.base_s * 2**attempt)
        return max(random.uniform(0, window), retry_after or 0.0)


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Spool:
    """Batches that could not be delivered, one file each, sent again oldest first."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def put(self, events: Sequence[Event]) -> None:
        with self._lock:
            name = f"{time.time_ns():020d}-{os.getpid()}.json"
            path = self.directory / name
            temporary = path.with_suffix(".tmp")
            with temporary.open("w") as out:
                json.dump([event.to_json() for event in events], out)
                out.flush()
                os.fsync(out.fileno())
            temporary.rename(path)  # whole, or not there

    def batches(self) -> list[Path]:
        return sorted(self.directory.glob("*.json"))

    @staticmethod
    def read(path: Path) -> list[Event] | None:
        """The batch of a file; None when it is gone (sent meanwhile) or unreadable."""
        try:
            return [Event.from_json(item) for item in json.loads(path.read_text())]
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            Spool.set_aside(path)
            return None

    @staticmethod
    def set_aside(path: Path) -> None:
        """A batch that can never be sent (unreadable, or refused for good) moves out of the
        way, kept as `*.failed` for someone to look at."""
        with contextlib.suppress(FileNotFoundError):
            path.rename(path.with_suffix(".failed"))


def _chunks(events: Sequence[Event]) -> Iterable[tuple[int, Sequence[Event]]]:
    for start in range(0, len(events), MAX_BULK):
        yield start, events[start : start + MAX_BULK]


class _Base:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        retry: Retry | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.timeout_s = timeout_s
        self.retry = retry or Retry()
        self.spool = Spool(spool_dir) if spool_dir is not None else None

    @staticmethod
    def _body(events: Sequence[Event]) -> tuple[str, list[dict[str, Any]]]:
        return "/events/bulk", [event.to_json() for event in events]

    def _outcome(self, response: httpx.Response) -> list[str] | float | None:
        """The event ids when accepted; a wait (Retry-After or None) when worth retrying."""
        if response.status_code == 202:
            try:
                ids: list[str] = response.json()["event_ids"]
            except (ValueError, KeyError, TypeError):
                return None  # not the service's answer (a proxy's?): try again
            return ids
        if response.status_code in RETRY_STATUSES:
            return retry_after(response)
        raise AuditError(response.status_code, response.text)


class AuditClient(_Base):
    """audit-ingest over HTTP, blocking."""

    def __init__(self, base_url: str, api_key: str, **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.Client(timeout=self.timeout_s)
        self._flushing = threading.Lock()

    def send(self, event: Event) -> list[str] | None:
        return self.send_many([event])

    def send_many(self, events: Sequence[Event]) -> list[str] | None:
        """Deliver the events (older spooled batches first); their ids, or None when spooled."""
        if self.spool is not None and not self.flush_spool():
            self.spool.put(events)
            return None
        ids: list[str] = []
        for start, chunk in _chunks(events):
            try:
                ids += self._deliver(chunk)
            except Undelivered:
                if self.spool is None:
                    raise
                self.spool.put(events[start:])  # this chunk and every one after it
                return None
        return ids

    def flush_spool(self) -> bool:
        """Send spooled batches, oldest first; whether the spool is empty now."""
        if self.spool is None:
            return True
        with self._flushing:
            for path in self.spool.batches():
                events = Spool.read(path)
                if events is None:
                    continue
                try:
                    self._deliver(events)
                except Undelivered:
                    return False
                except AuditError:
                    Spool.set_aside(path)
                    continue
                path.unlink(missing_ok=True)
        return True

    def _deliver(self, events: Sequence[Event]) -> list[str]:
        path, body = self._body(events)
        for attempt in range(self.retry.attempts):
            wait: float | None = None
            try:
                response = self._http.post(self.base_url + path, json=body, headers=self.headers)
                outcome = self._outcome(response)
                if isinstance(outcome, list):
                    return outcome
                wait = outcome
            except (httpx.TransportError, httpx.DecodingError, httpx.TooManyRedirects):
                pass
            if attempt + 1 < self.retry.attempts:
                time.sleep(self.retry.wait(attempt, wait))
        raise Undelivered(f"{len(events)} events not delivered after {self.retry.attempts} tries")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncAuditClient(_Base):
    """audit-ingest over HTTP, for asyncio."""

    def __init__(self, base_url: str, api_key: str, **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.AsyncClient(timeout=self.timeout_s)
        self._flushing = asyncio.Lock()

    async def send(self, event: Event) -> list[str] | None:
        return await self.send_many([event])

    async def send_many(self, events: Sequence[Event]) -> list[str] | None:
        """Deliver the events (older spooled batches first); their ids, or None when spooled."""
        if self.spool is not None and not await self.flush_spool():
            await asyncio.to_thread(self.spool.put, events)
            return None
        ids: list[str] = []
        for start, chunk in _chunks(events):
            try:
                ids += await self._deliver(chunk)
            except Undelivered:
                if self.spool is None:
                    raise
                await asyncio.to_thread(self.spool.put, events[start:])
                return None
        return ids

    async def flush_spool(self) -> bool:
        """Send spooled batches, oldest first; whether the spool is empty now."""
        if self.spool is None:
            return True
        async with self._flushing:
            for path in self.spool.batches():
                events = Spool.read(path)
                if events is None:
                    continue
                try:
                    await self._deliver(events)
                except Undelivered:
                    return False
                except AuditError:
                    Spool.set_aside(path)
                    continue
                path.unlink(missing_ok=True)
        return True

    async def _deliver(self, events: Sequence[Event]) -> list[str]:
        path, body = self._body(events)
        for attempt in range(self.retry.attempts):
            wait: float | None = None
            try:
                response = await self._http.post(
                    self.base_url + path, json=body, headers=self.headers
                )
                outcome = self._outcome(response)
                if isinstance(outcome, list):
                    return outcome
                wait = outcome
            except (httpx.TransportError, httpx.DecodingError, httpx.TooManyRedirects):
                pass
            if attempt + 1 < self.retry.attempts:
                await asyncio.sleep(self.retry.wait(attempt, wait))
        raise Undelivered(f"{len(events)} events not delivered after {self.retry.attempts} tries")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAuditClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
