"""`python -m app serve` as a real process on loopback, for tests that need real sockets, a
process's own memory figures, or answers streamed to a client that stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.core.config import Settings
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
    }
    values.update({f"AUDIT_{name.upper()}": str(value) for name, value in extra.items()})
    return values


@contextlib.asynccontextmanager
async def served(settings: Settings, **extra: Any) -> AsyncIterator[Served]:
    """The service on a free port with `settings` and `extra` settings; stopped afterwards."""
    port = free_port()
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
