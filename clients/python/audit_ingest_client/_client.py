"""Sync and async clients: retries with backoff and jitter that honour Retry-After, and a disk
spool for what cannot be delivered."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import stat
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from audit_ingest_client._event import Event

MAX_BULK = 1000  # events per request (the service takes up to 10,000)
# 408: the service's HTTP layer gave up on a request head or body that came too slowly
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CONTENT_STATUSES = frozenset({400, 413, 422})  # refusals of what a request holds
UNFINISHED_AFTER_S = 60.0  # a spool's temporary file older than this that no write holds

log = logging.getLogger("audit_ingest_client")


class AuditError(Exception):
    """The service would not take the events, and sending them again as they are cannot help."""

    def __init__(self, status: int, body: str, message: str | None = None) -> None:
        super().__init__(message or f"audit-ingest answered {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Refusal:
    """One event refused for what it holds, and why: `status` is the service's answer (400, 413,
    422), or None when the client refused it (JSON cannot carry its details)."""

    event: Event
    reason: str
    status: int | None

    def to_json(self) -> dict[str, Any]:
        """The record of the spool's set-aside files. An event JSON cannot carry is kept with
        its details as text (repr)."""
        try:
            event = json.loads(self.event.encode())
        except (TypeError, ValueError):
            event = {**self.event.to_json(), "details": repr(self.event.details)}
        return {"event": event, "status": self.status, "reason": self.reason}


class EventsRefused(AuditError):
    """Some events were refused for what they hold, each alone: `refused` says which and why.
    Every other event of the call was delivered (`event_ids`, in order) or, when `spooled`,
    written to the spool (its ids are then not all in `event_ids`)."""

    def __init__(self, refused: list[Refusal], event_ids: list[str], spooled: bool) -> None:
        statuses = [r.status for r in refused if r.status is not None]
        reasons = "; ".join(f"{r.event.event_id}: {r.reason}" for r in refused[:5])
        more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
        message = f"{len(refused)} audit events refused: {reasons}{more}"
        # 422 when only the client refused: what the service answers for such details
        super().__init__(statuses[0] if statuses else 422, "", message)
        self.refused = refused
        self.event_ids = event_ids
        self.spooled = spooled


class AccessError(AuditError):
    """An answer that is not about the events: a wrong, revoked or rotated key (401), a key
    without the ingest scope (403), a wrong URL (404, a redirect) or another 4xx (not 408:
    a request that reached the service too slowly is retried, as a 429). Nothing is
    given up: the events not delivered are in `undelivered` (the caller's to keep) or, when
    `spooled`, in the spool, which keeps every batch for when the client is set right.
    `refused` lists what was refused before it stopped (set aside in the spool too)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status, body)
        self.undelivered: list[Event] = []
        self.refused: list[Refusal] = []
        self.spooled = False


class Undelivered(Exception):
    """The events could not be delivered within the retries, and there is no spool:
    `undelivered` are the events not delivered, `refused` those refused before."""

    def __init__(
        self,
        message: str,
        undelivered: list[Event] | None = None,
        refused: list[Refusal] | None = None,
    ) -> None:
        super().__init__(message)
        self.undelivered = undelivered or []
        self.refused = refused or []


class _ContentRefused(Exception):
    """The service refused what a request holds (400, 413, 422)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


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
    """Batches that could not be delivered, one file each, sent again oldest first; beside
    them the events refused for good, set aside as `*.failed` records, and files that are no
    batch, set aside as they are as `*.unreadable`. PHI: the directory is its owner's alone
    (0700) and every file is made 0600, exclusively."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _keep_private(self.directory)
        self._lock = threading.Lock()
        self._remove_unfinished()

    def put(self, events: Sequence[Event]) -> None:
        """Write a batch, whole or not at all."""
        if events:
            body = b"[" + b",".join(event.encode() for event in events) + b"]"
            with self._lock:
                self._write(body, ".json")

    def keep_refused(self, refused: Sequence[Refusal]) -> None:
        """Set refused events aside, each with its status and reason (a `*.failed` file of
        `{"event", "status", "reason"}` records)."""
        if refused:
            path = self._keep_records([refusal.to_json() for refusal in refused])
            log.warning("%d audit events refused, set aside in %s", len(refused), path)

    def _keep_records(self, records: list[dict[str, Any]]) -> Path:
        body = json.dumps(records).encode()
        with self._lock:
            return self._write(body, ".failed")

    def replace(self, path: Path, events: Sequence[Event]) -> None:
        """Put `events` in place of the batch at `path` (what is left of it), whole or not."""
        if not events:
            path.unlink(missing_ok=True)
            return
        body = b"[" + b",".join(event.encode() for event in events) + b"]"
        with self._lock:
            self._write(body, ".json", path)

    def _write(self, body: bytes, suffix: str, path: Path | None = None) -> Path:
        while True:
            name = f"{time.time_ns():020d}-{os.getpid()}"
            temporary = self.directory / f"{name}.tmp"
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue  # the same nanosecond in this process: another name
            break
        try:
            with os.fdopen(fd, "wb") as out:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a live write, until it is renamed into place
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
                path = path or self.directory / f"{name}{suffix}"
                os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_directory(self.directory)  # the rename itself survives a crash
        return path

    def _remove_unfinished(self) -> None:
        """A temporary file is renamed into place once whole, its write holding a lock on it
        until then: one older than UNFINISHED_AFTER_S that no write holds is a crash's, never
        committed, and is removed (it may hold PHI)."""
        removed = 0
        for path in self.directory.glob("*.tmp"):
            try:
                if time.time() - path.lstat().st_mtime < UNFINISHED_AFTER_S:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:  # gone meanwhile (renamed into place), or a symlink
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                opened, named = os.fstat(fd), path.lstat()
                if stat.S_ISREG(opened.st_mode) and opened.st_ino == named.st_ino:
                    path.unlink()
                    removed += 1
            except OSError:  # a write holds it, or it was renamed into place meanwhile
                continue
            finally:
                os.close(fd)
        if removed:
            _sync_directory(self.directory)
            log.warning(
                "removed %d unfinished spool files a crash left in %s", removed, self.directory
            )

    def batches(self) -> list[Path]:
        return sorted(self.directory.glob("*.json"))

    def failed(self) -> list[Path]:
        """The refused events set aside, oldest first: `*.failed` files, each a JSON list of
        `{"event", "status", "reason"}` records."""
        return sorted(self.directory.glob("*.failed"))

    def unreadable(self) -> list[Path]:
        """The spooled files that were no batch (not JSON, or not a list), oldest first, set
        aside as they were: `*.unreadable` files."""
        return sorted(self.directory.glob("*.unreadable"))

    def read(self, path: Path) -> list[Event] | None:
        """The events of a spooled batch; None when it is gone (sent meanwhile) or is no batch
        (set aside whole). An item that is no event this client can make (an older client's,
        with a status this one does not know, say) is refused alone: kept in a `*.failed`
        record with why, and the batch rewritten without it, so that the others are sent and
        it is set aside once."""
        try:
            items = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, RecursionError):
            items = None
        if not isinstance(items, list):
            self.set_aside(path)
            return None
        events: list[Event] = []
        unusable: list[tuple[Any, str]] = []  # each item and why
        for item in items:
            try:
                if not isinstance(item, dict):
                    raise TypeError(f"not a JSON object but {type(item).__name__}")
                events.append(Event.from_json(item))
            except (TypeError, ValueError) as exc:
                unusable.append((item, str(exc)))
        if unusable:
            kept = self._keep_records(
                [
                    {"event": item, "status": None, "reason": f"unreadable in the spool: {why}"}
                    for item, why in unusable
                ]
            )
            named = "; ".join(f"{_spooled_id(item)}: {why}" for item, why in unusable[:10])
            more = f" (and {len(unusable) - 10} more)" if len(unusable) > 10 else ""
            log.error(
                "%d audit events of spooled batch %s unreadable, set aside in %s (the other %d"
                " kept to send): %s%s",
                len(unusable),
                path.name,
                kept.name,
                len(events),
                named,
                more,
            )
            self.replace(path, events)
        return events

    @staticmethod
    def set_aside(path: Path) -> None:
        """A batch file that cannot be read moves out of the way, kept as it is as
        `*.unreadable` for someone to look at."""
        unreadable = path.with_suffix(".unreadable")
        with contextlib.suppress(FileNotFoundError):
            path.rename(unreadable)
            _sync_directory(path.parent)
            log.error("spooled batch %s is unreadable, set aside as %s", path.name, unreadable.name)


def _spooled_id(item: object) -> str:
    """What names a spooled item in the log: its event id, never its content (PHI)."""
    event_id = item.get("event_id") if isinstance(item, dict) else None
    return event_id[:64] if isinstance(event_id, str) else "(no event_id)"


def _keep_private(directory: Path) -> None:
    """A spool directory is its owner's alone: one this process made is 0700; an existing one
    of ours that others can read (as earlier clients made them) is made so, its files 0600;
    one owned by another user is refused (PermissionError), not changed."""
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"the spool {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise PermissionError(
            f"the spool {directory} is owned by uid {info.st_uid}, not by this process' user"
            f" ({os.geteuid()}): audit events hold PHI; give the client a directory of its own"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        mode = stat.S_IMODE(info.st_mode)
        log.warning("spool %s was %03o; made 0700, its files 0600", directory, mode)
        os.chmod(directory, 0o700)
        for path in directory.iterdir():
            if path.is_file() and not path.is_symlink():
                os.chmod(path, 0o600)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_Item = tuple[Event, bytes]  # an event and its JSON


def _reasons(body: str, count: int) -> dict[int, list[str]]:
    """The problems a refusal lists per event of the request, by index:
    `{"error": {"details": [{"index", "field", "type", "message"}, ...]}}` (the service lists
    the first 100 problems; the events of the others are found when the rest is sent again)."""
    try:
        details = json.loads(body)["error"]["details"]
    except (ValueError, KeyError, TypeError):
        return {}
    reasons: dict[int, list[str]] = {}
    for problem in details if isinstance(details, list) else []:
        if not isinstance(problem, dict):
            continue
        index = problem.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < count:
            field = problem.get("field") or "event"
            reason = f"{field}: {problem.get('message')} ({problem.get('type')})"
            reasons.setdefault(index, []).append(reason)
    return reasons


def _message(body: str) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:500]
    return str(message)


class _Sending:
    """One call's events on their way: the groups still to send (a request each), the ids
    the service took, and the events refused (by the client when JSON cannot carry them, by
    the service for what they hold)."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.event_ids: list[str] = []
        self.refused: list[Refusal] = []
        items: list[_Item] = []
        for event in events:
            try:
                items.append((event, event.encode()))
            except (TypeError, ValueError) as exc:
                self.refused.append(Refusal(event, str(exc), None))
        self.groups = deque(
            items[start : start + MAX_BULK] for start in range(0, len(items), MAX_BULK)
        )

    def next(self) -> list[_Item] | None:
        return self.groups.popleft() if self.groups else None

    def left(self, group: list[_Item] | None = None) -> list[Event]:
        """The events not delivered yet: `group` (the one in flight) and those after it."""
        return [event for part in (group or [], *self.groups) for event, _ in part]

    def sort_out(self, group: list[_Item], refusal: _ContentRefused) -> list[Refusal]:
        """After the service refused `group`: the events it refused, each alone with its
        reasons; the others go again. A refusal that names no event (a request over the
        service's size limits, JSON nested deeper than its parser takes) is split in halves
        down to the one event it is about, so no event is refused for another's sake."""
        reasons = _reasons(refusal.body, len(group))
        if reasons:
            refused = [
                Refusal(group[i][0], "; ".join(r), refusal.status)
                for i, r in sorted(reasons.items())
            ]
            rest = [item for i, item in enumerate(group) if i not in reasons]
            if rest:
                self.groups.appendleft(rest)
        elif len(group) > 1:
            half = len(group) // 2
            self.groups.extendleft([group[half:], group[:half]])
            refused = []
        else:
            message = _message(refusal.body)
            refused = [Refusal(event, message, refusal.status) for event, _ in group]
        self.refused += refused
        return refused

    def outcome(self, spooled: bool) -> list[str] | None:
        """What send_many returns: the ids when everything was delivered, None when some were
        spooled; EventsRefused when any event was refused."""
        if self.refused:
            raise EventsRefused(self.refused, self.event_ids, spooled)
        return None if spooled else self.event_ids


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
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.timeout_s = timeout_s
        self.retry = retry or Retry()
        self.spool = Spool(spool_dir) if spool_dir is not None else None

    @staticmethod
    def _body(group: list[_Item]) -> tuple[str, bytes]:
        return "/events/bulk", b"[" + b",".join(encoded for _, encoded in group) + b"]"

    def _outcome(self, response: httpx.Response) -> list[str] | float | None:
        """The event ids when accepted; a wait (Retry-After or None) when worth retrying;
        _ContentRefused when the service refused what was sent, AccessError for any other
        answer (the key, its scope, the URL): resending cannot help either."""
        if response.status_code == 202:
            try:
                ids: list[str] = response.json()["event_ids"]
            except (ValueError, KeyError, TypeError):
                return None  # not the service's answer (a proxy's?): try again
            return ids
        if response.status_code in RETRY_STATUSES:
            return retry_after(response)
        if response.status_code in CONTENT_STATUSES:
            raise _ContentRefused(response.status_code, response.text)
        raise AccessError(response.status_code, response.text)

    @staticmethod
    def _stopped(
        error: AccessError, sending: _Sending, left: list[Event], spooled: bool
    ) -> AccessError:
        error.undelivered = [] if spooled else left
        error.refused = sending.refused
        error.spooled = spooled
        return error


class AuditClient(_Base):
    """audit-ingest over HTTP, blocking."""

    def __init__(self, base_url: str, api_key: str, **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.Client(timeout=self.timeout_s)
        self._flushing = threading.Lock()

    def send(self, event: Event) -> list[str] | None:
        return self.send_many([event])

    def send_many(self, events: Sequence[Event]) -> list[str] | None:
        """Deliver the events (older spooled batches first). Every event is delivered, spooled
        or refused, each alone:

        - the ids, in order, when every event was delivered; None when some or all were
          spooled instead (the service was away);
        - EventsRefused when any was refused (JSON cannot carry its details, or the service
          refused what it holds: 400, 413, 422), after the others were delivered or spooled;
          the refused are set aside in the spool too;
        - AccessError when the service answered anything else (401, 403, 404, a redirect):
          the events are spooled, or, without a spool, in its `undelivered`;
        - Undelivered, without a spool, when the service stayed away through the retries.
        """
        sending = _Sending(events)
        if not self._spool_first(sending):
            return sending.outcome(spooled=True)
        while (group := sending.next()) is not None:
            try:
                sending.event_ids += self._deliver(group)
            except _ContentRefused as exc:
                refused = sending.sort_out(group, exc)
                if self.spool is not None:
                    self.spool.keep_refused(refused)
            except AccessError as exc:
                if self.spool is not None:
                    self.spool.put(sending.left(group))
                spooled = self.spool is not None
                raise self._stopped(exc, sending, sending.left(group), spooled) from None
            except Undelivered as exc:
                if self.spool is None:
                    raise Undelivered(str(exc), sending.left(group), sending.refused) from None
                self.spool.put(sending.left(group))  # this group and every one after it
                return sending.outcome(spooled=True)
        return sending.outcome(spooled=False)

    def _spool_first(self, sending: _Sending) -> bool:
        """Set aside what the client refused and send the spool first: whether that emptied it
        (if not, the events are spooled behind it)."""
        if self.spool is None:
            return True
        self.spool.keep_refused(sending.refused)
        try:
            flushed = self.flush_spool()
        except AccessError as exc:
            self.spool.put(sending.left())
            raise self._stopped(exc, sending, [], spooled=True) from None
        if not flushed:
            self.spool.put(sending.left())
        return flushed

    def flush_spool(self) -> bool:
        """Send spooled batches, oldest first; whether the spool is empty now (False: the
        service is away). Events refused for what they hold are set aside with their reasons;
        any other refusal (AccessError: a wrong key, a wrong URL) stops the flush, raised, and
        every batch not sent stays in the spool."""
        if self.spool is None:
            return True
        with self._flushing:
            for path in self.spool.batches():
                events = self.spool.read(path)
                if events is None:
                    continue
                sending = _Sending(events)
                self.spool.keep_refused(sending.refused)
                while (group := sending.next()) is not None:
                    try:
                        sending.event_ids += self._deliver(group)
                    except _ContentRefused as exc:
                        self.spool.keep_refused(sending.sort_out(group, exc))
                    except (Undelivered, AccessError) as exc:
                        if sending.refused:  # set aside already: not to be sent again
                            self.spool.replace(path, sending.left(group))
                        if isinstance(exc, AccessError):
                            raise
                        return False
                path.unlink(missing_ok=True)
        return True

    def _deliver(self, group: list[_Item]) -> list[str]:
        path, body = self._body(group)
        for attempt in range(self.retry.attempts):
            wait: float | None = None
            try:
                response = self._http.post(self.base_url + path, content=body, headers=self.headers)
                outcome = self._outcome(response)
                if isinstance(outcome, list):
                    return outcome
                wait = outcome
            except (httpx.TransportError, httpx.DecodingError, httpx.TooManyRedirects):
                pass
            if attempt + 1 < self.retry.attempts:
                time.sleep(self.retry.wait(attempt, wait))
        raise Undelivered(f"{len(group)} events not delivered after {self.retry.attempts} tries")

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
        """As AuditClient.send_many."""
        sending = _Sending(events)
        if not await self._spool_first(sending):
            return sending.outcome(spooled=True)
        spool = self.spool
        while (group := sending.next()) is not None:
            try:
                sending.event_ids += await self._deliver(group)
            except _ContentRefused as exc:
                refused = sending.sort_out(group, exc)
                if spool is not None:
                    await asyncio.to_thread(spool.keep_refused, refused)
            except AccessError as exc:
                if spool is not None:
                    await asyncio.to_thread(spool.put, sending.left(group))
                raise self._stopped(exc, sending, sending.left(group), spool is not None) from None
            except Undelivered as exc:
                if spool is None:
                    raise Undelivered(str(exc), sending.left(group), sending.refused) from None
                await asyncio.to_thread(spool.put, sending.left(group))
                return sending.outcome(spooled=True)
        return sending.outcome(spooled=False)

    async def _spool_first(self, sending: _Sending) -> bool:
        """As AuditClient._spool_first."""
        spool = self.spool
        if spool is None:
            return True
        await asyncio.to_thread(spool.keep_refused, sending.refused)
        try:
            flushed = await self.flush_spool()
        except AccessError as exc:
            await asyncio.to_thread(spool.put, sending.left())
            raise self._stopped(exc, sending, [], spooled=True) from None
        if not flushed:
            await asyncio.to_thread(spool.put, sending.left())
        return flushed

    async def flush_spool(self) -> bool:
        """As AuditClient.flush_spool."""
        spool = self.spool
        if spool is None:
            return True
        async with self._flushing:
            for path in spool.batches():
                events = await asyncio.to_thread(spool.read, path)
                if events is None:
                    continue
                sending = _Sending(events)
                await asyncio.to_thread(spool.keep_refused, sending.refused)
                while (group := sending.next()) is not None:
                    try:
                        sending.event_ids += await self._deliver(group)
                    except _ContentRefused as exc:
                        await asyncio.to_thread(spool.keep_refused, sending.sort_out(group, exc))
                    except (Undelivered, AccessError) as exc:
                        if sending.refused:
                            await asyncio.to_thread(spool.replace, path, sending.left(group))
                        if isinstance(exc, AccessError):
                            raise
                        return False
                path.unlink(missing_ok=True)
        return True

    async def _deliver(self, group: list[_Item]) -> list[str]:
        path, body = self._body(group)
        for attempt in range(self.retry.attempts):
            wait: float | None = None
            try:
                response = await self._http.post(
                    self.base_url + path, content=body, headers=self.headers
                )
                outcome = self._outcome(response)
                if isinstance(outcome, list):
                    return outcome
                wait = outcome
            except (httpx.TransportError, httpx.DecodingError, httpx.TooManyRedirects):
                pass
            if attempt + 1 < self.retry.attempts:
                await asyncio.sleep(self.retry.wait(attempt, wait))
        raise Undelivered(f"{len(group)} events not delivered after {self.retry.attempts} tries")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAuditClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
