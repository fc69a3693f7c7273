"""The service as real processes (app.local.processes): `python -m app serve` (writers off) and
`python -m app worker`, each in its own process group with its log in a file, started, frozen,
signalled and restarted; and the one-shot commands around them."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis.asyncio as redis
from redis.exceptions import RedisError

from app.local.processes import AppProcess
from app.queue.stream import StreamKeys

READY_TIMEOUT_S = 60.0
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


class ServiceProcess(AppProcess):
    """One API (with its port) or worker process of a scenario, its log in `log`."""

    def __init__(
        self, name: str, command: str, env: dict[str, str], log: Path, port: int | None = None
    ) -> None:
        super().__init__([command], env, log=log, cwd=log.parent, name=name)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
        api = ServiceProcess(name, "serve", env, self.logs / f"{name}.log", port)
        self.apis.append(api)
        return api

    def add_worker(self) -> ServiceProcess:
        name = f"worker-{len(self.workers) + 1}"
        worker = ServiceProcess(name, "worker", self.env, self.logs / f"{name}.log")
        self.workers.append(worker)
        return worker

    @property
    def urls(self) -> list[str]:
        return [api.url for api in self.apis]

    async def start(self, *processes: ServiceProcess) -> None:
        """Start the processes (all, when none is named) and wait until each is ready."""
        chosen = list(processes) or [*self.apis, *self.workers]
        for process in chosen:
            process.start()
        await asyncio.gather(*(self.ready(p) for p in chosen))

    async def ready(self, process: ServiceProcess) -> None:
        """An API answers /healthz; a worker has joined the consumer group."""
        if process.port:
            await process.ready([process.url + "/healthz"], READY_TIMEOUT_S)
            return
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not await self._worker_ready(process):
            process.check_running("before it was ready")
            if time.monotonic() > deadline:
                raise HarnessError(f"{process.name} not ready in time; see {process.log_path}")
            await asyncio.sleep(0.1)

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
        times = await asyncio.gather(*(p.stopped(grace_s) for p in running))
        return {p.name: t for p, t in zip(running, times, strict=True)}
