"""The faults, each injected under steady load; `run_scenarios` runs them one after another.

Each inject function acts on a running service while the driver sends events, adds its own
observations (and problems) to the outcome, and says how much loss it tolerates: none in every
scenario here. A SIGKILL of redis-server alone keeps what Redis wrote to the OS before it
answered, with `appendfsync always` or `everysec` alike; only a crash of the machine could take
the last unsynced second or two with it (`Expectation.loss_allowed_between`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace

from loadtests.faults.checks import Expectation, Outcome
from loadtests.faults.driver import LoadPlan
from loadtests.faults.harness import (
    FULL,
    SHORT,
    SHUTDOWN_GRACE_S,
    Harness,
    Profile,
    Scenario,
    Stage,
)
from loadtests.faults.processes import ServiceProcess

GROUP = "writers"
RECENT_S = 2.0  # a fault must strike while events are being acknowledged: some in this time
SHUTDOWN_MARGIN_S = 2.0  # process exit after the grace period (interpreter and socket teardown)
CLEAN_EXITS = (0, -signal.SIGTERM)  # uvicorn ends by re-raising the SIGTERM it handled


async def pending_of(stage: Stage, mark: str = "") -> int:
    """Entries read and not yet acked: all of them, or those of consumers whose name has `mark`."""
    total = 0
    for key in (stage.keys.high, stage.keys.normal):
        summary = await stage.client.xpending(key, GROUP)
        if not mark:
            total += int(summary["pending"])
            continue
        for consumer in summary["consumers"]:
            if mark in consumer["name"].decode():
                total += int(consumer["pending"])
    return total


async def in_flight(stage: Stage, mark: str = "", within_s: float = 5.0) -> int:
    """Wait (up to `within_s`) until writers (those whose consumer name has `mark`) hold
    unacked entries, a batch between read and ack; how many they hold then (0: never seen)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        held = await pending_of(stage, mark)
        if held:
            return held
        await asyncio.sleep(0.005)
    return 0


async def kill_mid_batch(stage: Stage, worker: ServiceProcess) -> bool:
    """SIGKILL the worker while it holds a batch; whether it was caught so (killed anyway)."""
    caught = await in_flight(stage, f":{worker.pid}:") > 0
    await worker.kill()
    return caught


async def writer_kill(stage: Stage) -> Expectation:
    caught = 0
    for round_ in range(stage.profile.writer_kills):
        worker = stage.service.workers[round_ % len(stage.service.workers)]
        caught += await kill_mid_batch(stage, worker)
        await asyncio.sleep(0.5)
        await stage.service.start(worker)
        await asyncio.sleep(1.0)
    kills = stage.profile.writer_kills
    stage.outcome.notes.append(f"{kills} writer SIGKILLs, {caught} of them mid-batch")
    return Expectation()


async def api_kill(stage: Stage) -> Expectation:
    api = stage.service.apis[0]
    for _ in range(stage.profile.api_kills):
        await api.kill()
        await asyncio.sleep(2.0)
        await stage.service.start(api)
        await asyncio.sleep(1.0)
    stage.outcome.notes.append(f"{stage.profile.api_kills} API SIGKILLs; clients moved on")
    return Expectation()


async def postgres_outage(stage: Stage) -> Expectation:
    answers = stage.driver.tally.answers
    full_before = answers["503 queue_full"]
    down = time.monotonic()
    await stage.postgres.stop("fast")
    try:
        await asyncio.sleep(stage.profile.pg_outage_s)
    finally:
        await stage.postgres.start()
    up = time.monotonic()
    accepted = stage.driver.tally.accepted_between(down, up)
    refused = answers["503 queue_full"] - full_before
    stage.outcome.notes.append(
        f"PostgreSQL down {up - down:.1f} s: {accepted} events accepted meanwhile, "
        f"{refused} answers 503 queue_full (depth limit {stage.profile.outage_depth})"
    )
    if accepted == 0:
        stage.outcome.problems.append("nothing was accepted while PostgreSQL was down")
    if refused == 0:
        stage.outcome.problems.append("no 503 queue_full while PostgreSQL was down")
    await backlog_written(stage)
    return Expectation()


async def backlog_written(stage: Stage) -> None:
    """How long the backlog takes to be written once PostgreSQL is back: until the depth is
    under a twentieth of it (the load goes on meanwhile)."""
    started = time.monotonic()
    backlog = int(await stage.client.get(stage.keys.depth) or 0)
    while time.monotonic() - started < stage.profile.drain_timeout_s:
        if int(await stage.client.get(stage.keys.depth) or 0) <= max(500, backlog // 20):
            stage.outcome.notes.append(
                f"backlog of {backlog} events written {time.monotonic() - started:.1f} s "
                "after PostgreSQL returned"
            )
            return
        await asyncio.sleep(0.1)
    stage.outcome.problems.append(f"backlog of {backlog} events still queued after the outage")


async def redis_crash(stage: Stage) -> Expectation:
    """SIGKILL redis-server under load and start it again on its AOF: every event it
    acknowledged, the last ones before the kill too, must be stored."""
    crashed = time.monotonic()
    await stage.redis_server.crash()
    recent = stage.driver.tally.accepted_between(crashed - RECENT_S, crashed)
    await asyncio.sleep(stage.profile.redis_down_s)
    await stage.redis_server.start()
    stage.outcome.notes.append(
        f"Redis SIGKILLed with {recent} events acknowledged in the {RECENT_S:.0f} s before, "
        f"restarted {time.monotonic() - crashed:.1f} s later "
        f"(appendfsync {stage.redis_server.appendfsync})"
    )
    if recent == 0:
        stage.outcome.problems.append(
            f"no event acknowledged in the {RECENT_S:.0f} s before Redis was killed"
        )
    return Expectation()


async def poison(stage: Stage) -> Expectation:
    await asyncio.sleep(stage.profile.steady_s)  # the load carries the poison (with_poison)
    return Expectation()


async def sigterm(stage: Stage) -> Expectation:
    held = await in_flight(stage)
    exits = await stage.service.stop_all(SHUTDOWN_GRACE_S + 10)
    processes = [*stage.service.apis, *stage.service.workers]
    codes = {p.name: p.process.returncode or 0 for p in processes if p.process}
    slowest = max(exits.values())
    left = await pending_of(stage)
    stage.outcome.notes.append(
        f"SIGTERM to all with {held} entries in flight: slowest exit {slowest:.1f} s (grace "
        f"{SHUTDOWN_GRACE_S:.0f} s), {left} left pending, exit codes {sorted(set(codes.values()))}"
    )
    if slowest > SHUTDOWN_GRACE_S + SHUTDOWN_MARGIN_S:
        late = {name: round(t, 1) for name, t in exits.items()}
        stage.outcome.problems.append(f"shutdown slower than the grace period: {late}")
    if left:
        stage.outcome.problems.append(f"{left} entries left pending (in flight, not acked)")
    if failed := {name: code for name, code in codes.items() if code not in CLEAN_EXITS}:
        stage.outcome.problems.append(f"unclean exits after SIGTERM: {failed}")
    await asyncio.sleep(1.0)
    await stage.service.start()
    return Expectation()


async def scale_out(stage: Stage) -> Expectation:
    await asyncio.sleep(stage.profile.steady_s)
    where = f", {len(stage.shards)} stream shards" if len(stage.shards) > 1 else ""
    stage.outcome.notes.append(
        f"{len(stage.service.apis)} API and {len(stage.service.workers)} writer processes{where}"
    )
    return Expectation()


def outage_depth(profile: Profile) -> dict[str, str]:
    return {"AUDIT_MAX_QUEUE_DEPTH": str(profile.outage_depth)}


def with_poison(plan: LoadPlan) -> LoadPlan:
    return replace(plan, poison_every=25, conflict_every=40)


SCENARIOS = (
    Scenario("writer-kill", writer_kill, workers=2),
    Scenario("api-kill", api_kill, apis=2),
    Scenario("pg-outage", postgres_outage, workers=2, settings=outage_depth),
    Scenario("redis-always", redis_crash),
    Scenario("redis-everysec", redis_crash, appendfsync="everysec"),
    Scenario("poison", poison, poison=True, plan=with_poison),
    Scenario("sigterm", sigterm, apis=2, workers=2),
    Scenario("scale-out", scale_out, apis=4, workers=3),
    Scenario("redis-cluster", scale_out, apis=2, workers=2, shards=3, cluster=True),
)
NAMES = tuple(s.name for s in SCENARIOS)


async def run_scenarios(names: list[str] | None = None, short: bool = False) -> list[Outcome]:
    """Run the named scenarios (all when None), in order, on one harness."""
    unknown = set(names or ()) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {', '.join(NAMES)}")
    chosen = [s for s in SCENARIOS if names is None or s.name in names]
    outcomes = []
    async with Harness(SHORT if short else FULL) as harness:
        for scenario in chosen:
            outcomes.append(await harness.run(scenario))
    return outcomes
