"""`python -m app serve` as a real process on loopback, for tests that need real sockets, a
process's own memory figures, or answers streamed to a client that stops reading: `served` for
asyncio tests, `serving` for synchronous ones (raw sockets, Hypothesis-driven runs)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from app.core.config import Settings
from app.local.processes import AppProcess, clean_environment
from app.local.servers import free_port

START_WITHIN_S = 30.0
STOP_WITHIN_S = 10.0


@dataclass
class Served:
    url: str
    port: int
    process: AppProcess

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss_kb(self) -> int:
        """The process's peak resident set (VmHWM) so far: psutil has no figure of it."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


def environment(settings: Settings, **extra: Any) -> dict[str, str]:
    """The settings that the test fixtures make, as a served process reads them."""
    values = {
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_REDIS_URL": settings.redis_url,
        "AUDIT_SIGNING_KEYS": settings.signing_keys,
        "AUDIT_SERVICE_KEYS": settings.service_keys,
        "AUDIT_LEDGER_KEYS": settings.ledger_keys,
        "AUDIT_STREAM_PREFIX": settings.stream_prefix,
        "AUDIT_BATCH_MAX_WAIT_MS": str(settings.batch_max_wait_ms),
        "AUDIT_LOG_LEVEL": "WARNING",
        "AUDIT_THRESHOLD_EVENTS": str(settings.threshold_events).lower(),
        "AUDIT_WATCH_ENABLED": str(settings.watch_enabled).lower(),
    }
    values.update({f"AUDIT_{name.upper()}": str(value) for name, value in extra.items()})
    return values


@contextlib.asynccontextmanager
async def served(
    settings: Settings, *, port: int | None = None, **extra: Any
) -> AsyncIterator[Served]:
    """The service on `port` (a free one by default) with `settings` and `extra` settings;
    stopped afterwards."""
    port = port or free_port()
    process = AppProcess(["serve"], {**os.environ, **environment(settings, port=port, **extra)})
    url = f"http://127.0.0.1:{port}"
    process.start()
    try:
        await process.ready([url + "/healthz"], START_WITHIN_S)
        yield Served(url, port, process)
    finally:
        await process.stopped(STOP_WITHIN_S)


@dataclass
class ServedProcess:
    """`python -m app serve` started synchronously, in a process group of its own (its workers
    too, with AUDIT_API_PROCESSES > 1), its output in `log`."""

    url: str
    port: int
    process: AppProcess
    log: Path

    def tail(self, chars: int = 3_000) -> str:
        return self.process.tail(chars)


def explicit_environment(settings: Settings) -> dict[str, str]:
    """This process's environment without AUDIT_ variables, plus the settings the test set."""
    env = clean_environment()
    for name, value in settings.model_dump(include=settings.model_fields_set).items():
        env[f"AUDIT_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@contextlib.contextmanager
def serving(
    settings: Settings, log: Path, *, ready: str = "/healthz", cwd: Path | None = None
) -> Iterator[ServedProcess]:
    """The service on `settings.port` until `ready` answers 200; then stopped (SIGTERM to its
    process group, SIGKILL if it lingers) and its stream keys deleted. `cwd`: a directory
    without the checkout's .env, when given."""
    url = f"http://127.0.0.1:{settings.port}"
    log.write_bytes(b"")
    process = AppProcess(["serve"], explicit_environment(settings), log=log, cwd=cwd)
    process.start()
    try:
        process.wait_ready([url + ready], START_WITHIN_S * 2)
        yield ServedProcess(url, settings.port, process, log)
    finally:
        process.stop(15.0)
        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(match="{" + settings.stream_prefix + "}*"))
        if keys:
            client.delete(*keys)
        client.close()
