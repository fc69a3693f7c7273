"""`python -m app serve` as a real process on loopback, for tests that need real sockets, a
process's own memory figures, or answers streamed to a client that stops reading: `served` for
asyncio tests, `serving` for synchronous ones (raw sockets, Hypothesis-driven runs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from app.core.config import Settings
from loadtests.faults.processes import clean_environment
from loadtests.faults.servers import free_port

START_WITHIN_S = 30.0


@dataclass
class Served:
    url: str
    port: int
    process: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss_kb(self) -> int:
        """The process's peak resident set (VmHWM) so far."""
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
    env = {**os.environ, **environment(settings, port=port, **extra)}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "serve", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            deadline = time.monotonic() + START_WITHIN_S
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url + "/healthz")).status_code == 200:
                        break
                assert process.returncode is None, "serve exited"
                assert time.monotonic() < deadline, "serve did not start"
                await asyncio.sleep(0.1)
        yield Served(url, port, process)
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 5)


@dataclass
class ServedProcess:
    """`python -m app serve` started synchronously, in a process group of its own (its workers
    too, with AUDIT_API_PROCESSES > 1), its output in `log`."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3_000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


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
    process group, SIGKILL if it lingers) and its stream keys deleted."""
    url = f"http://127.0.0.1:{settings.port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            env=explicit_environment(settings),
            cwd=cwd,  # a directory without the checkout's .env, when given
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServedProcess(url, settings.port, process, log)
    try:
        deadline = time.monotonic() + START_WITHIN_S * 2
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + ready, timeout=2).status_code == 200:
                    break
            assert process.poll() is None, f"serve exited ({process.returncode}):\n{server.tail()}"
            assert time.monotonic() < deadline, f"serve was not ready in time:\n{server.tail()}"
            time.sleep(0.1)
        yield server
    finally:
        stop_group(process)
        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(match="{" + settings.stream_prefix + "}*"))
        if keys:
            client.delete(*keys)
        client.close()


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM to the process's group, SIGKILL if it does not exit within `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
