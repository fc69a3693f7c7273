"""The harness's servers, run by app.local.servers: the system's PostgreSQL (AUDIT_FAULTS_PG_BIN,
else the newest /usr/lib/postgresql/*/bin, else the PATH's) and `redis-server`, as production
runs them; `redis-cli` joins three of them into a Redis Cluster."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import cast

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster as ClusterClient

from app.local.servers import PostgresServer, RedisCluster, RedisServer, system_postgres_bin
from loadtests.faults.processes import HarnessError

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when there is none."""
    override = os.environ.get("AUDIT_FAULTS_PG_BIN")
    return Path(override) if override else system_postgres_bin()


def missing_tools() -> list[str]:
    """What this machine lacks to run the harness ([] when nothing)."""
    missing = [] if postgres_bin() else ["initdb/pg_ctl"]
    if not shutil.which(REDIS_SERVER):
        missing.append(REDIS_SERVER)
    if not shutil.which(REDIS_CLI):
        missing.append(f"{REDIS_CLI} (it creates the Redis Cluster)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        missing.append("runuser (PostgreSQL refuses to run as root)")
    return missing


def postgres(root: Path) -> PostgresServer:
    """One cluster for every scenario: no fsync (a throwaway), room for their connections."""
    folder = postgres_bin()
    if folder is None:
        raise HarnessError("initdb/pg_ctl not found (set AUDIT_FAULTS_PG_BIN)")
    settings = {"max_connections": "300"}
    return PostgresServer(root / "postgres" / "data", folder, settings=settings, scratch=True)


def redis_server(root: Path, name: str, appendfsync: str) -> RedisServer:
    """redis-server with AOF on and `appendfsync` as given, no RDB snapshots, no eviction."""
    config = {
        "save": "",
        "appendonly": "yes",
        "appendfsync": appendfsync,
        "maxmemory-policy": "noeviction",
    }
    return RedisServer(REDIS_SERVER, root / f"redis-{name}", config=config)


def redis_cluster(root: Path, name: str) -> RedisCluster:
    return RedisCluster(REDIS_SERVER, REDIS_CLI, root / f"cluster-{name}")


def _cluster_client(url: str) -> redis.Redis:
    """A Redis Cluster client (typed as the plain one, whose commands it serves)."""
    return cast(redis.Redis, ClusterClient.from_url(url))


def connector(servers: RedisServer | RedisCluster) -> Callable[[], redis.Redis]:
    """Makes a new client of the scenario's Redis (or cluster) at each call."""
    if isinstance(servers, RedisCluster):
        return functools.partial(_cluster_client, servers.url)
    return functools.partial(redis.Redis.from_url, servers.url)
