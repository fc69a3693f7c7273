"""The service as real processes: `python -m app serve` (writers off) and `python -m app worker`,
each in its own process group with its log in a file, started, signalled and restarted by id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import psutil
import redis.asyncio as redis
from redis.exceptions import RedisError

from app.queue.stream import StreamKeys

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
KILL_WAIT_S = 10.0
FREEZE_WAIT_S = 1.0


class HarnessError(Exception):
    """The harness itself could not do its part (a server did not start, a command failed)."""


async def run_command(
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    limit_s: float = 300,
    check: bool = True,
) -> tuple[int, str]:
    """Run a one-shot command to completion: its exit code and stdout; stderr goes to `log`.
    With `check`, a non-zero exit raises."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=log.parent,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), limit_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise HarnessError(f"{' '.join(argv[:4])} timed out; see {log}") from None
    code = process.returncode or 0
    if check and code != 0:
        raise HarnessError(f"{' '.join(argv[:4])} exited {code}; see {log}")
    return code, out.decode()


def clean_environment() -> dict[str, str]:
    """This environment without AUDIT_* settings, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


@dataclass
class ServiceProcess:
    """One API or worker process; `start` again after a kill runs a fresh one."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise HarnessError(f"{self.name} is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self._close_log()
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            cwd=self.log_path.parent,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )

    def send(self, sig: signal.Signals) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    async def wait(self, within_s: float) -> bool:
        """Whether the process ended within `within_s` seconds."""
        if self.process is None:
            return True
        try:
            await asyncio.wait_for(self.process.wait(), within_s)
        except TimeoutError:
            return False
        return True

    async def freeze(self) -> None:
        """SIGSTOP, and wait until the process is stopped: from then on it does nothing at all
        (no ack, no answer) until it is thawed, terminated or killed."""
        self.send(signal.SIGSTOP)
        deadline = time.monotonic() + FREEZE_WAIT_S
        while time.monotonic() < deadline:
            if not self.running or self._stopped():
                return
            await asyncio.sleep(0.001)

    def thaw(self) -> None:
        self.send(signal.SIGCONT)

    def _stopped(self) -> bool:
        """Whether the kernel says the process is stopped (or gone)."""
        try:
            state = psutil.Process(self.pid).status()
        except psutil.Error:
            return True  # gone
        return state in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)

    async def kill(self) -> None:
        self.send(signal.SIGKILL)
        await self.wait(KILL_WAIT_S)
        self._close_log()

    async def stop(self, grace_s: float) -> float:
        """SIGTERM, then SIGKILL after `grace_s`; returns how long it took to exit. A frozen
        process is thawed right after the SIGTERM, so it wakes to it."""
        started = time.monotonic()
        self.send(signal.SIGTERM)
        self.send(signal.SIGCONT)
        if not await self.wait(grace_s):
            await self.kill()
        self._close_log()
        return time.monotonic() - started

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()


@dataclass
class Service:
    """The API and worker processes of one scenario, all with one environment."""

    env: dict[str, str]
    logs: Path
    connect: Callable[[], redis.Redis]  # a new client of the scenario's Redis (or cluster)
    shards: list[StreamKeys]
    apis: list[ServiceProcess] = field(default_factory=list)
    workers: list[ServiceProcess] = field(default_factory=list)

    def add_api(self, port: int) -> ServiceProcess:
        env = {**self.env, "AUDIT_PORT": str(port), "AUDIT_RUN_WRITERS": "false"}
        name = f"api-{len(self.apis) + 1}"
        api = ServiceProcess(name, self._argv("serve"), env, self.logs / f"{name}.log", port)
        self.apis.append(api)
        return api

    def add_worker(self) -> ServiceProcess:
        name = f"worker-{len(self.workers) + 1}"
        worker = ServiceProcess(name, self._argv("worker"), self.env, self.logs / f"{name}.log")
        self.workers.append(worker)
        return worker

    @staticmethod
    def _argv(command: str) -> list[str]:
        return [sys.executable, "-m", "app", command]

    @property
    def urls(self) -> list[str]:
        return [api.url for api in self.apis]

    async def start(self, *processes: ServiceProcess) -> None:
        """Start the processes (all, when none is named) and wait until each is ready."""
        chosen = list(processes) or [*self.apis, *self.workers]
        for process in chosen:
            await process.start()
        await asyncio.gather(*(self.ready(p) for p in chosen))

    async def ready(self, process: ServiceProcess) -> None:
        """An API answers /healthz; a worker has joined the consumer group."""
        check = self._api_ready if process.port else self._worker_ready
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not await check(process):
            if not process.running:
                code = process.process.returncode if process.process else None
                raise HarnessError(f"{process.name} exited ({code}); see {process.log_path}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{process.name} not ready in time; see {process.log_path}")
            await asyncio.sleep(0.1)

    @staticmethod
    async def _api_ready(api: ServiceProcess) -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                return (await client.get(api.url + "/healthz")).status_code == 200
            except httpx.TransportError:
                return False

    async def _worker_ready(self, worker: ServiceProcess) -> bool:
        """One of its writers has read from a shard: each beats its shards' heartbeat keys
        with its consumer name (which embeds the process id) about once a second. A client of
        its own: one kept from before a Redis crash would hold a dead connection."""
        client = self.connect()
        try:
            for keys in self.shards:
                beat = await client.get(keys.heartbeat)
                if isinstance(beat, bytes) and f":{worker.pid}:" in beat.decode():
                    return True
        except RedisError:
            return False
        finally:
            await client.aclose()
        return False

    async def stop_all(self, grace_s: float) -> dict[str, float]:
        """SIGTERM every process at once; how long each took to exit."""
        running = [p for p in (*self.apis, *self.workers) if p.running]
        times = await asyncio.gather(*(p.stop(grace_s) for p in running))
        return {p.name: t for p, t in zip(running, times, strict=True)}
