"""The service under test, run as the README runs it: `python -m app serve` with its writers
off and `python -m app worker` processes, each in its own process group, with their own stream
prefix, a fresh signing key and an API key from `python -m app keys create`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as redis

from app.core.config import Settings
from app.ledger.signing import new_keypair
from app.local.processes import AppProcess, answers
from app.local.servers import free_port
from loadtests.bench.database import app_env, run_app
from loadtests.bench.progress import say

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
SCOPES = "ingest,priority,read,admin,operator"


@dataclass(frozen=True, slots=True)
class Layout:
    api_processes: int = 1
    worker_processes: int = 1  # 0: the API processes run the writers themselves
    writers: int = 2  # writer tasks per writing process
    batch_size: int = Settings.model_fields["batch_size"].default
    batch_wait_ms: int = Settings.model_fields["batch_max_wait_ms"].default
    watch: bool = True  # the watch runs in the writers' processes, as deployed (--no-watch)


@dataclass(slots=True)
class Service:
    settings: dict[str, str]
    api_urls: list[str]
    metrics_urls: list[str]  # where audit_ingest_to_persist_seconds is exposed
    key: str = ""
    processes: dict[str, AppProcess] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.processes.items()}


def base_settings(database_url: str, redis_url: str, layout: Layout) -> dict[str, str]:
    secret, service, ledger = (base64.b64encode(os.urandom(32)).decode() for _ in range(3))
    private, public = new_keypair()
    return {
        "AUDIT_DATABASE_URL": database_url,
        "AUDIT_REDIS_URL": redis_url,
        "AUDIT_SIGNING_KEYS": f"bench:{secret}",
        "AUDIT_SERVICE_KEYS": f"bench-service:{service}",
        "AUDIT_LEDGER_KEYS": f"bench-ledger:{ledger}",
        # As a deployment runs: heads signed with Ed25519 too, and the writers' checkpointer
        # signing a checkpoint every few seconds while the log grows (no witness to send it to:
        # verification says "not anchored", with no findings).
        "AUDIT_LEDGER_PRIVATE_KEY": private,
        "AUDIT_LEDGER_PUBLIC_KEY": public,
        # One tenant at the service's limit: its rate limits far above what a host holds (the
        # buckets still run), and all of the queue its own.
        "AUDIT_RATE_LIMIT_KEY_EVENTS": "10000000",
        "AUDIT_RATE_LIMIT_ORG_EVENTS": "10000000",
        "AUDIT_ORG_QUEUE_SHARE": "1",
        "AUDIT_STREAM_PREFIX": f"audit-bench-{uuid.uuid4().hex[:10]}",
        "AUDIT_HOST": "127.0.0.1",
        "AUDIT_WRITERS": str(layout.writers),
        "AUDIT_BATCH_SIZE": str(layout.batch_size),
        "AUDIT_BATCH_MAX_WAIT_MS": str(layout.batch_wait_ms),
        "AUDIT_SHUTDOWN_GRACE_S": "5",
        "AUDIT_LOG_LEVEL": "WARNING",
        # Its own violation events would count as accepted beside the generators' 202s.
        "AUDIT_THRESHOLD_EVENTS": "false",
        # Its alert events are counted apart (accounting.py).
        "AUDIT_WATCH_ENABLED": "true" if layout.watch else "false",
    }


def _spawn(name: str, command: str, env: dict[str, str], logs: Path) -> AppProcess:
    process = AppProcess([command], app_env(env), log=logs / f"{name}.log", cwd=logs, name=name)
    process.start()
    return process


def start_processes(service: Service, layout: Layout, logs: Path) -> None:
    writers_in_api = layout.worker_processes == 0
    for i in range(layout.api_processes):
        port = free_port()
        env = dict(service.settings, AUDIT_PORT=str(port))
        env["AUDIT_RUN_WRITERS"] = "true" if writers_in_api else "false"
        service.processes[f"api-{i + 1}"] = _spawn(f"api-{i + 1}", "serve", env, logs)
        service.api_urls.append(f"http://127.0.0.1:{port}")
    if writers_in_api:
        service.metrics_urls += [f"{url}/metrics" for url in service.api_urls]
    for i in range(layout.worker_processes):
        port = free_port()
        env = dict(service.settings, AUDIT_WORKER_METRICS_PORT=str(port))
        service.processes[f"worker-{i + 1}"] = _spawn(f"worker-{i + 1}", "worker", env, logs)
        service.metrics_urls.append(f"http://127.0.0.1:{port}/metrics")


def stop_processes(processes: dict[str, AppProcess]) -> None:
    """SIGTERM to every group at once (writers drain), then SIGKILL to whatever is left."""
    for process in processes.values():
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes.values():
        process.reap(max(0.1, deadline - time.monotonic()))


def exited(service: Service) -> list[str]:
    """What each service process that is no longer running said last."""
    return [
        f"{name} exited with {process.returncode}:\n{process.tail()}"
        for name, process in service.processes.items()
        if process.process is not None and not process.running
    ]


async def wait_ready(service: Service) -> None:
    """Every API answers /readyz (which wants a writer heartbeat) and every metrics port."""
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = [f"{u}/readyz" for u in service.api_urls] + list(service.metrics_urls)
    while waiting:
        if gone := exited(service):
            raise RuntimeError("\n".join(gone))
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {START_TIMEOUT_S:.0f} s: {waiting}")
        found = await asyncio.gather(*(asyncio.to_thread(answers, url) for url in waiting))
        waiting = [url for url, ok in zip(waiting, found, strict=True) if not ok]
        if waiting:
            await asyncio.sleep(0.2)


async def delete_stream_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match="{" + prefix + "}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running_service(
    database_url: str, redis_url: str, layout: Layout, logs: Path
) -> AsyncIterator[Service]:
    settings = base_settings(database_url, redis_url, layout)
    service = Service(settings, api_urls=[], metrics_urls=[])
    try:
        start_processes(service, layout, logs)
        command = ["keys", "create", "--org", "bench", "--scopes", SCOPES, "--name", "bench"]
        out, _ = await asyncio.gather(run_app(command, settings), wait_ready(service))
        service.key = out.strip().splitlines()[-1]
        yield service
    except BaseException:
        for line in exited(service):
            say(line)
        raise
    finally:
        await asyncio.to_thread(stop_processes, service.processes)
        await delete_stream_keys(redis_url, settings["AUDIT_STREAM_PREFIX"])
