"""The fault-injection harness: its own PostgreSQL cluster (one database per scenario, copied
from a migrated template that holds the API key), its own Redis per scenario, the service as
real processes, the load driver, and the checks. Everything it starts, it stops."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncpg
import redis.asyncio as redis

from app.cli.integrity import NOT_ANCHORED_EXIT
from app.local.processes import clean_environment
from app.local.servers import PostgresServer, RedisCluster, RedisServer, ServerError, free_port
from app.queue.stream import StreamKeys
from loadtests.faults.checks import (
    Expectation,
    Outcome,
    account,
    counters_balance,
    dead_letter_ids,
    drained,
    stored_digests,
)
from loadtests.faults.driver import POISON_PREFIX, LoadDriver, LoadPlan
from loadtests.faults.processes import HarnessError, Service, run_command
from loadtests.faults.servers import connector, postgres, redis_cluster, redis_server

ORG = "faults"
TEMPLATE = "faults_template"
SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True)
class Profile:
    """How long and how hard: the full run, or the short one the test suite runs."""

    warmup_s: float
    settle_s: float
    writer_kills: int
    api_kills: int
    pg_outage_s: float
    redis_down_s: float
    steady_s: float  # load without a fault, where a scenario only watches
    outage_depth: int  # AUDIT_MAX_QUEUE_DEPTH while PostgreSQL is down
    events_per_s: float
    drain_timeout_s: float
    max_load_s: float


SHORT = Profile(2.0, 2.0, 2, 1, 6.0, 1.0, 4.0, 4000, 1500.0, 60.0, 120.0)
FULL = Profile(4.0, 5.0, 5, 2, 30.0, 3.0, 20.0, 20000, 2500.0, 180.0, 300.0)


@dataclass
class Stage:
    """What a scenario acts on while the load runs."""

    profile: Profile
    postgres: PostgresServer
    redis_servers: RedisServer | RedisCluster
    service: Service
    driver: LoadDriver
    client: redis.Redis
    shards: list[StreamKeys]
    outcome: Outcome

    @property
    def keys(self) -> StreamKeys:
        """The first shard's keys (all of them, unless the scenario shards the stream)."""
        return self.shards[0]

    @property
    def redis_server(self) -> RedisServer:
        """The one Redis of a scenario that is not on a cluster."""
        if not isinstance(self.redis_servers, RedisServer):
            raise HarnessError("this scenario runs on a Redis Cluster, not one server")
        return self.redis_servers


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Callable[[Stage], Awaitable[Expectation]]
    apis: int = 1
    workers: int = 1
    appendfsync: str = "always"
    poison: bool = False
    shards: int = 1  # AUDIT_STREAM_SHARDS
    cluster: bool = False  # a 3-master Redis Cluster instead of one Redis
    settings: Callable[[Profile], dict[str, str]] = field(default=lambda _: {})
    plan: Callable[[LoadPlan], LoadPlan] = field(default=lambda plan: plan)


class Harness:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.root = Path(tempfile.mkdtemp(prefix="audit-faults-"))
        self.root.chmod(0o755)  # the postgres user must reach its folder inside
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.postgres = postgres(self.root)
        self.signing_keys = "faults-1:" + base64.b64encode(os.urandom(32)).decode()
        self.service_keys = "faults-service-1:" + base64.b64encode(os.urandom(32)).decode()
        self.ledger_keys = "faults-ledger-1:" + base64.b64encode(os.urandom(32)).decode()
        self.key = ""
        self.failed = False

    async def __aenter__(self) -> Harness:
        try:
            await asyncio.to_thread(self.postgres.init)
            await asyncio.to_thread(self.postgres.start)
            await self._template()
        except BaseException:
            await self._cleanup()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.failed = self.failed or kind is not None
        await self._cleanup()

    async def _cleanup(self) -> None:
        with contextlib.suppress(ServerError):
            await asyncio.to_thread(self.postgres.stop, "immediate")
        if self.failed:
            kept = Path(tempfile.mkdtemp(prefix="audit-faults-logs-"))
            shutil.copytree(self.logs, kept, dirs_exist_ok=True)
            redis_logs = [
                *self.root.glob("redis-*/redis.log"),
                *self.root.glob("cluster-*/*/*.log"),
            ]
            for log in [self.postgres.log_path, *redis_logs]:
                with contextlib.suppress(OSError):
                    shutil.copy(log, kept / f"{log.parent.name}-{log.name}")
            print(f"logs kept in {kept}", file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)

    def env(
        self,
        database_url: str,
        redis_url: str = "",
        prefix: str = ORG,
        scenario: Scenario | None = None,
    ) -> dict[str, str]:
        layout = {}
        if scenario is not None:
            layout = {
                "AUDIT_STREAM_SHARDS": str(scenario.shards),
                "AUDIT_REDIS_CLUSTER": "true" if scenario.cluster else "false",
            }
        return (
            clean_environment()
            | layout
            | {
                "AUDIT_DATABASE_URL": database_url,
                "AUDIT_REDIS_URL": redis_url,
                "AUDIT_SIGNING_KEYS": self.signing_keys,
                "AUDIT_SERVICE_KEYS": self.service_keys,
                "AUDIT_LEDGER_KEYS": self.ledger_keys,
                "AUDIT_ORG_QUEUE_SHARE": "1",  # one tenant: the queue depth mark is the bound
                "AUDIT_STREAM_PREFIX": prefix,
                "AUDIT_CLAIM_IDLE_MS": "2000",
                "AUDIT_CLAIM_INTERVAL_MS": "500",
                "AUDIT_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
                "AUDIT_RETRY_MAX_MS": "1000",
                "AUDIT_BATCH_SIZE": "1000",
                "AUDIT_DB_POOL_SIZE": "4",
                "AUDIT_LOG_LEVEL": "INFO",
                # Every event stored must be one the driver sent (no threshold or alert
                # events: the driver's break-glass accesses would raise alerts); no line per
                # request.
                "AUDIT_THRESHOLD_EVENTS": "false",
                "AUDIT_WATCH_ENABLED": "false",
                "AUDIT_ACCESS_LOG": "false",
            }
        )

    async def _app(self, log: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
        return await run_command([sys.executable, "-m", "app", *args], log, env, check=False)

    async def _template(self) -> None:
        await self._admin(f'CREATE DATABASE "{TEMPLATE}"')
        env = self.env(self.postgres.url(TEMPLATE))
        code, _ = await self._app(self.logs / "migrate.log", env, "migrate")
        if code != 0:
            raise HarnessError(f"migrate failed; see {self.logs / 'migrate.log'}")
        scopes = ("--org", ORG, "--scopes", "ingest,priority,read,verify,admin,operator")
        code, out = await self._app(self.logs / "keys.log", env, "keys", "create", *scopes)
        if code != 0 or not out.strip():
            raise HarnessError(f"keys create failed; see {self.logs / 'keys.log'}")
        self.key = out.strip().splitlines()[-1]

    async def _admin(self, sql: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(self.postgres.url(database))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def database_for(self, scenario: Scenario) -> str:
        name = "faults_" + scenario.name.replace("-", "_")
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        if scenario.poison:  # a value the API lets through and the table refuses
            await self._admin(
                "ALTER TABLE audit_log ADD CONSTRAINT ck_faults_poison "
                f"CHECK (principal_id NOT LIKE '{POISON_PREFIX}%')",
                name,
            )
        return self.postgres.url(name)

    async def run(self, scenario: Scenario) -> Outcome:
        """Start the scenario's servers and processes, inject its faults under load, check,
        and stop everything; a harness failure is reported as the scenario's problem."""
        outcome = Outcome(scenario.name)
        started = time.monotonic()
        servers: RedisServer | RedisCluster
        if scenario.cluster:
            servers = redis_cluster(self.root, scenario.name)
        else:
            servers = redis_server(self.root, scenario.name, scenario.appendfsync)
        prefix = f"faults-{scenario.name}"
        shards = [StreamKeys.for_shard(prefix, i, scenario.shards) for i in range(scenario.shards)]
        client: redis.Redis | None = None
        service: Service | None = None
        try:
            database_url = await self.database_for(scenario)
            await asyncio.to_thread(servers.start)
            client = connector(servers)()
            env = self.env(database_url, servers.url, prefix, scenario)
            service = await self._start_service(scenario, env, connector(servers), shards)
            plan = scenario.plan(LoadPlan(events_per_s=self.profile.events_per_s))
            driver = LoadDriver(service.urls, self.key, plan)
            stage = Stage(
                self.profile, self.postgres, servers, service, driver, client, shards, outcome
            )
            expect = await self._under_load(scenario, stage)
            await self._check(stage, expect, database_url)
            if len(shards) > 1:
                await self._check_chains(stage, database_url)
        except Exception as exc:
            outcome.problems.append(f"harness: {type(exc).__name__}: {exc}")
        finally:
            if service is not None:
                await service.stop_all(SHUTDOWN_GRACE_S + 10)
            if client is not None:
                await client.aclose()
            await asyncio.to_thread(servers.stop)
        outcome.seconds = time.monotonic() - started
        self.failed = self.failed or not outcome.passed
        return outcome

    async def _check_chains(self, stage: Stage, database_url: str) -> None:
        """Each shard sealed its own chain, every one of them gap-free from seq 1."""
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT chain, count(*) AS entries, max(seq) AS newest, sum(event_count) AS events"
                " FROM audit_ledger GROUP BY chain ORDER BY chain"
            )
        finally:
            await conn.close()
        chains = {r["chain"]: r for r in rows}
        shards = len(stage.shards)
        if sorted(chains) != list(range(shards)):
            stage.outcome.problems.append(f"chains {sorted(chains)}, expected 0..{shards - 1}")
        for chain, row in chains.items():
            if row["entries"] != row["newest"]:
                stage.outcome.problems.append(f"chain {chain} has gaps")
        events = ", ".join(f"chain {c}: {r['events']}" for c, r in chains.items())
        stage.outcome.notes.append(f"{len(chains)} chains; events per chain: {events}")

    async def _start_service(
        self,
        scenario: Scenario,
        env: dict[str, str],
        connect: Callable[[], redis.Redis],
        shards: list[StreamKeys],
    ) -> Service:
        env = env | scenario.settings(self.profile)
        service = Service(env, self.logs / scenario.name, connect, shards)
        service.logs.mkdir()
        for _ in range(scenario.apis):
            service.add_api(free_port())
        for _ in range(scenario.workers):
            service.add_worker()
        await service.start()
        return service

    async def _under_load(self, scenario: Scenario, stage: Stage) -> Expectation:
        stop = asyncio.Event()
        load = asyncio.create_task(stage.driver.run(stop, self.profile.max_load_s))
        try:
            await asyncio.sleep(self.profile.warmup_s)
            expect = await scenario.inject(stage)
            await asyncio.sleep(self.profile.settle_s)
        except BaseException:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
            raise
        stop.set()
        await load
        return expect

    async def _check(self, stage: Stage, expect: Expectation, database_url: str) -> None:
        out, tally = stage.outcome, stage.driver.tally
        out.drain_s = await drained(stage.client, stage.shards, self.profile.drain_timeout_s)
        if out.drain_s is None:
            out.problems.append(f"queue not drained in {self.profile.drain_timeout_s:.0f} s")
        stored = await stored_digests(database_url, ORG)
        dead = await dead_letter_ids(stage.client, stage.shards)
        account(out, tally, stored, dead, expect)
        if unbalanced := await counters_balance(stage.client, stage.shards):
            out.problems.append(unbalanced)
        log = self.logs / out.scenario / "verify.log"
        code, summary = await self._app(log, self.env(database_url), "verify")
        # No witness cosigns this harness's log: intact is "not anchored" (exit 3), whose
        # findings are none just as for exit 0; anything broken exits 1.
        out.verified = code in (0, NOT_ANCHORED_EXIT)
        if not out.verified:
            out.problems.append(f"`python -m app verify` exited {code}: {summary[-300:]}")
        elif code == NOT_ANCHORED_EXIT:
            out.notes.append("verify: no findings, not anchored (no witness in this harness)")
        answers = ", ".join(f"{k} {v}" for k, v in sorted(tally.answers.items()))
        out.notes.append(f"answers: {answers}")
        if tally.gave_up:
            stored_anyway = len(tally.gave_up & set(stored))
            out.notes.append(
                f"unconfirmed (no 202 after retries): {len(tally.gave_up)}, "
                f"{stored_anyway} of them stored"
            )
