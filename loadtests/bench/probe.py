"""What the service is doing, read from outside: /operator/queue/stats (operator key), the writers'
Prometheus histogram of ingest-to-persist time, CPU and memory of every process involved
(the service's own, this load generator, Redis, and the PostgreSQL backends of the bench
database), and the connections open: sockets of the service's processes and of Redis, backends
of the bench database, Redis clients."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import redis.asyncio as redis

from app.core.metrics import Buckets
from loadtests.bench import procstat
from loadtests.bench.service import Service
from loadtests.bench.stats import add_buckets, buckets_from_text

LAG_METRIC = "audit_ingest_to_persist_seconds"
BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
WATCH_SETTLED = """
SELECT NOT EXISTS (SELECT 1 FROM watch_alerts WHERE recorded_at IS NULL)
   AND NOT EXISTS (
       SELECT 1 FROM (SELECT chain, max(seq) AS head FROM audit_ledger GROUP BY chain) AS l
       LEFT JOIN watch_progress p USING (chain) WHERE coalesce(p.seq, 0) < l.head)
"""
# Processes whose resident memory means little (shared buffers count in each backend's RSS).
NO_RSS = frozenset({"postgres"})
# Processes whose sockets are not the service's: the bench's own, and the backends (counted
# from pg_stat_activity instead).
NO_SOCKETS = frozenset({"load generator", "postgres"})


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # time.monotonic()
    stats: dict[str, Any]
    lag: Buckets
    cpu: dict[str, dict[int, float]]  # process group -> pid -> CPU seconds


@dataclass(frozen=True, slots=True)
class Connections:
    sockets: dict[str, int]  # process -> open sockets (service processes and Redis)
    pg_backends: int | None  # connected to the bench database, the probe's own not counted
    redis_clients: int | None  # INFO clients connected_clients, the probe's own not counted


@dataclass(slots=True)
class Probe:
    service: Service
    database_url: str
    redis_url: str
    http: httpx.AsyncClient = field(init=False)
    db: asyncpg.Connection | None = None
    redis_pid: int | None = None
    redis_conn: redis.Redis | None = None
    db_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one query at a time

    async def open(self) -> None:
        headers = {"Authorization": f"Bearer {self.service.key}"}
        self.http = httpx.AsyncClient(headers=headers, timeout=10.0)
        self.db = await asyncpg.connect(self.database_url)
        self.redis_conn = redis.Redis.from_url(self.redis_url)
        try:
            info = await self.redis_conn.info("server")
            self.redis_pid = int(info["process_id"])
        except (redis.RedisError, KeyError, ValueError):
            self.redis_pid = None

    async def close(self) -> None:
        await self.http.aclose()
        if self.db is not None:
            await self.db.close()
        if self.redis_conn is not None:
            await self.redis_conn.aclose()

    async def watch_settled(self) -> bool:
        """The watch has examined every sealed entry and recorded every alert it stored (its
        audit.alert.raised events are accepted after the load's, so the accounting waits)."""
        assert self.db is not None
        async with self.db_lock:
            return bool(await self.db.fetchval(WATCH_SETTLED))

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get(f"{self.service.api_urls[0]}/operator/queue/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def lag(self) -> Buckets:
        total: Buckets = {}
        for url in self.service.metrics_urls:
            response = await self.http.get(url)
            response.raise_for_status()
            total = add_buckets(total, buckets_from_text(response.text, LAG_METRIC))
        return total

    async def process_groups(self) -> dict[str, list[int]]:
        groups = {name: [pid] for name, pid in self.service.pids.items()}
        groups["load generator"] = [os.getpid()]
        if self.redis_pid is not None:
            groups["redis"] = [self.redis_pid]
        if self.db is not None:
            async with self.db_lock:
                backends = await self.db.fetch(BACKENDS)
            own = self.db.get_server_pid()
            groups["postgres"] = [r["pid"] for r in backends if r["pid"] != own]
        return groups

    async def snapshot(self) -> Snapshot:
        stats, lag, groups = await asyncio.gather(self.stats(), self.lag(), self.process_groups())
        cpu = {name: procstat.cpu_seconds(pids) for name, pids in groups.items()}
        return Snapshot(time.monotonic(), stats, lag, cpu)

    @staticmethod
    def rss_mb(groups: dict[str, list[int]]) -> dict[str, float]:
        memory: dict[str, float] = {}
        for name, pids in groups.items():
            if name in NO_RSS:
                continue
            found = [s for s in (procstat.sample(p) for p in pids) if s is not None]
            if found:
                memory[name] = sum(s.rss_bytes for s in found) / 2**20
        return memory

    async def connections(self, groups: dict[str, list[int]]) -> Connections:
        sockets: dict[str, int] = {}
        for name, pids in groups.items():
            if name in NO_SOCKETS:
                continue
            found = [n for n in (procstat.open_sockets(p) for p in pids) if n is not None]
            if found:
                sockets[name] = sum(found)
        backends = groups.get("postgres")
        return Connections(
            sockets=sockets,
            pg_backends=None if backends is None else len(backends),
            redis_clients=await self.redis_clients(),
        )

    async def redis_clients(self) -> int | None:
        """Clients connected to Redis, all of them (the server may serve others than the
        bench), less the probe's own connection."""
        if self.redis_conn is None:
            return None
        info = await self.redis_conn.info("clients")
        return int(info["connected_clients"]) - 1


def cpu_percent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Per process group, the CPU used between the snapshots (100 = one core busy); pids alive
    at both ends only."""
    seconds = after.at - before.at
    if seconds <= 0:
        return {}
    used: dict[str, float] = {}
    for name, pids in after.cpu.items():
        start = before.cpu.get(name, {})
        common = [pid for pid in pids if pid in start]
        if common:
            used[name] = 100 * sum(pids[p] - start[p] for p in common) / seconds
    return used
