"""Throwaway PostgreSQL and Redis servers on free loopback ports, under one temporary folder.

PostgreSQL comes from `initdb`/`pg_ctl` (AUDIT_FAULTS_PG_BIN, else the newest
/usr/lib/postgresql/*/bin, else the PATH). Both refuse to run as root: as root they run as the
`postgres` OS user through `runuser`. Redis is `redis-server` with AOF on, in its own process
group, so a crash is one SIGKILL of that group. `RedisClusterServers` is a 3-master Redis Cluster
(no replicas, no persistence) for tests of the cluster client.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from loadtests.faults.processes import HarnessError, run_command

PG_USER = "postgres"
START_TIMEOUT_S = 30.0
CLUSTER_SIZE = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when there is none."""
    override = os.environ.get("AUDIT_FAULTS_PG_BIN")
    if override:
        return Path(override)
    found = glob.glob("/usr/lib/postgresql/*/bin")
    found.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(found):
        if (Path(folder) / "initdb").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def missing_tools() -> list[str]:
    """What this machine lacks to run the harness ([] when nothing)."""
    missing = [] if postgres_bin() else ["initdb/pg_ctl"]
    if not shutil.which("redis-server"):
        missing.append("redis-server")
    if not shutil.which("redis-cli"):
        missing.append("redis-cli (it creates the Redis Cluster)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        missing.append("runuser (PostgreSQL refuses to run as root)")
    return missing


def as_postgres_user(folder: Path) -> list[str]:
    """The command prefix that runs PostgreSQL's tools as a non-root user; as root, hands
    `folder` to the `postgres` user first."""
    if os.geteuid() != 0:
        return []
    try:
        account = pwd.getpwnam(PG_USER)
    except KeyError as exc:
        raise HarnessError("running as root needs an OS user named postgres") from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise HarnessError("running as root needs runuser to start PostgreSQL as postgres")
    os.chown(folder, account.pw_uid, account.pw_gid)
    return [runuser, "-u", PG_USER, "--"]


class PostgresServer:
    """One cluster: trust auth, loopback only, no fsync (a throwaway)."""

    def __init__(self, root: Path) -> None:
        folder = postgres_bin()
        if folder is None:
            raise HarnessError("initdb/pg_ctl not found (set AUDIT_FAULTS_PG_BIN)")
        self.bin = folder
        self.folder = root / "postgres"
        self.data = self.folder / "data"
        self.port = free_port()
        self._prefix: list[str] = []

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    async def init(self) -> None:
        self.folder.mkdir(parents=True)
        self._prefix = as_postgres_user(self.folder)
        initdb = [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER]
        await run_command([*self._prefix, *initdb, "-E", "UTF8", "--no-sync"], self._out("initdb"))

    async def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=300"
        )
        await self._ctl("start", "-l", str(self.log_path), "-o", options)

    async def stop(self, mode: str = "fast") -> None:
        await self._ctl("stop", "-m", mode)

    async def _ctl(self, action: str, *args: str) -> None:
        wait = ["-w", "-t", str(int(START_TIMEOUT_S))]
        command = [*self._prefix, str(self.bin / "pg_ctl"), action, "-D", str(self.data), *wait]
        await run_command([*command, *args], self._out("pg_ctl"))

    def _out(self, tool: str) -> Path:
        return self.folder.parent / "logs" / f"{tool}.log"


class RedisServer:
    """redis-server with AOF on, `appendfsync` as given; crash() is a SIGKILL."""

    def __init__(self, root: Path, name: str, appendfsync: str) -> None:
        self.folder = root / f"redis-{name}"
        self.port = free_port()
        self.appendfsync = appendfsync
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync),
            *("--dir", str(self.folder), "--maxmemory-policy", "noeviction"),
            *("--logfile", str(self.folder / "redis.log")),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(RedisError, OSError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        raise HarnessError(f"redis-server on port {self.port} did not answer")

    async def crash(self) -> None:
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        await self._end(signal.SIGTERM)

    async def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def cluster_ok(client: redis.Redis) -> bool:
    """Whether this node says `cluster_state:ok` (all slots served)."""
    info: dict[str, str] = await client.cluster("info")
    return info.get("cluster_state") == "ok"


class RedisClusterServers:
    """A 3-master Redis Cluster on loopback, one `redis-server` per folder under a temporary
    folder (each in its own process group, log in `<folder>/redis.log`); stop() ends them all
    and removes the folder. Bus ports are picked free too: `port + 10000` may pass 65535."""

    def __init__(self, parent: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="audit-cluster-", dir=parent))
        picked: set[int] = set()
        while len(picked) < 2 * CLUSTER_SIZE:
            picked.add(free_port())
        ordered = sorted(picked)
        self.ports, self._bus_ports = ordered[:CLUSTER_SIZE], ordered[CLUSTER_SIZE:]
        self._processes: list[asyncio.subprocess.Process] = []

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    @property
    def url(self) -> str:
        """The first node: enough as the startup node of a cluster client."""
        return self.urls[0]

    def client(self) -> redis.Redis:
        """A Redis Cluster client (typed as the plain one, whose commands it serves)."""
        return cast(redis.Redis, RedisCluster.from_url(self.url))

    async def start(self) -> None:
        """Start the nodes and create the cluster (stop() ends what started, also on failure)."""
        for port, bus_port in zip(self.ports, self._bus_ports, strict=True):
            self._processes.append(await self._start_node(port, bus_port))
        await self._wait_all("answer PING", lambda client: client.ping())
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        log = self.root / "cluster-create.log"
        code, out = await run_command([*create, "--cluster-yes"], log, limit_s=60, check=False)
        if code != 0:
            detail = out[-2000:] + log.read_text(errors="replace")[-2000:]
            raise HarnessError(f"redis-cli --cluster create exited {code}:\n{detail}")
        await self._wait_all("reach cluster_state:ok", cluster_ok)

    async def stop(self) -> None:
        processes, self._processes = self._processes, []
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    async def _start_node(self, port: int, bus_port: int) -> asyncio.subprocess.Process:
        folder = self.root / f"node-{port}"
        folder.mkdir()
        cluster = ("--cluster-enabled", "yes", "--cluster-port", str(bus_port))
        return await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", *cluster),
            *("--cluster-config-file", str(folder / f"nodes-{port}.conf")),
            *("--save", "", "--appendonly", "no", "--dir", str(folder), "--daemonize", "no"),
            *("--logfile", str(folder / "redis.log")),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )

    async def _wait_all(self, what: str, ready: Callable[[redis.Redis], Awaitable[bool]]) -> None:
        """Until `ready` holds on every node; on timeout, a HarnessError with the logs' tails."""
        clients = [redis.Redis.from_url(url, socket_connect_timeout=1) for url in self.urls]
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if any(process.returncode is not None for process in self._processes):
                    break  # a node exited: its log says why
                with contextlib.suppress(RedisError, OSError):
                    if all([await ready(client) for client in clients]):
                        return
                await asyncio.sleep(0.05)
        finally:
            for client in clients:
                await client.aclose()
        tails = "\n".join(self._log_tail(port) for port in self.ports)
        raise HarnessError(f"Redis Cluster nodes {self.ports} did not {what}\n{tails}")

    def _log_tail(self, port: int, lines: int = 10) -> str:
        try:
            text = (self.root / f"node-{port}" / "redis.log").read_text(errors="replace")
        except OSError as exc:
            return f"--- node {port}: no log ({exc})"
        return f"--- node {port} redis.log:\n" + "\n".join(text.splitlines()[-lines:])
