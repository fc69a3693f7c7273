"""The faults, each injected under steady load; `run_scenarios` runs them one after another.

Each inject function acts on a running service while the driver sends events, adds its own
observations (and problems) to the outcome, and says how much loss it tolerates: none in every
scenario here. A SIGKILL of redis-server alone keeps what Redis wrote to the OS before it
answered, with `appendfsync always` or `everysec` alike; only a crash of the machine could take
the last unsynced second or two with it (`Expectation.loss_allowed_between`).
"""

from __future__ import annotations

import asyncio
import random
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
LAND_WITHIN_S = 5.0  # how long a fault waits for its moment (a batch held, a request open)
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


async def freeze_holding(stage: Stage, workers: list[ServiceProcess]) -> int:
    """Freeze the workers (SIGSTOP) at a moment their writers hold unacked entries, a batch
    between read and ack, and return how many: a frozen process acks nothing, so a signal sent
    next lands mid-batch. Between looks the workers run on; after LAND_WITHIN_S without
    catching one holding entries, 0, with the workers running."""
    marks = [f":{worker.pid}:" for worker in workers]
    deadline = time.monotonic() + LAND_WITHIN_S
    while True:
        for worker in workers:
            await worker.freeze()
        held = sum([await pending_of(stage, mark) for mark in marks])
        if held:
            return held
        for worker in workers:
            worker.thaw()
        if time.monotonic() > deadline:
            return 0
        await asyncio.sleep(random.uniform(0.002, 0.02))


async def writer_kill(stage: Stage) -> Expectation:
    """SIGKILL writer processes in turn, each frozen while it holds a batch, and restart them;
    another writer must reclaim and store what each held."""
    held: list[int] = []
    for round_ in range(stage.profile.writer_kills):
        worker = stage.service.workers[round_ % len(stage.service.workers)]
        held.append(await freeze_holding(stage, [worker]))
        await worker.killed()
        await asyncio.sleep(0.5)
        await stage.service.start(worker)
        await asyncio.sleep(1.0)
    kills, missed = len(held), held.count(0)
    stage.outcome.notes.append(
        f"{kills} writer SIGKILLs, {kills - missed} of them mid-batch (entries held: {held})"
    )
    if missed:
        stage.outcome.problems.append(
            f"{missed} of {kills} writer SIGKILLs not mid-batch (no unacked entries held "
            f"within {LAND_WITHIN_S:.0f} s)"
        )
    return Expectation()


async def kill_with_requests_open(stage: Stage, api: ServiceProcess) -> int:
    """SIGKILL the API at a moment the driver has requests to it open (waiting up to
    LAND_WITHIN_S for one); how many were open at the kill (0: none, killed anyway)."""
    open_requests = stage.driver.open_requests
    deadline = time.monotonic() + LAND_WITHIN_S
    while time.monotonic() < deadline:
        if open_requests[api.url]:
            break
        await asyncio.sleep(0.001)
    opened = open_requests[api.url]
    await api.killed()  # its SIGKILL goes out before it yields: no request ended since the count
    return opened


async def api_kill(stage: Stage) -> Expectation:
    """SIGKILL an API process while requests to it are open, and restart it; its clients must
    move to the other API and resend."""
    api = stage.service.apis[0]
    opened: list[int] = []
    for _ in range(stage.profile.api_kills):
        opened.append(await kill_with_requests_open(stage, api))
        await asyncio.sleep(2.0)
        await stage.service.start(api)
        await asyncio.sleep(1.0)
    kills, missed = len(opened), opened.count(0)
    stage.outcome.notes.append(
        f"{kills} API SIGKILLs with requests to it open: {opened}; clients moved on"
    )
    if missed:
        stage.outcome.problems.append(
            f"{missed} of {kills} API SIGKILLs with no request open to it (none within "
            f"{LAND_WITHIN_S:.0f} s)"
        )
    return Expectation()


async def postgres_outage(stage: Stage) -> Expectation:
    answers = stage.driver.tally.answers
    full_before = answers["503 queue_full"]
    down = time.monotonic()
    await asyncio.to_thread(stage.postgres.stop, "fast")
    try:
        await asyncio.sleep(stage.profile.pg_outage_s)
    finally:
        await asyncio.to_thread(stage.postgres.start)
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
    await asyncio.to_thread(stage.redis_server.crash)
    recent = stage.driver.tally.accepted_between(crashed - RECENT_S, crashed)
    await asyncio.sleep(stage.profile.redis_down_s)
    await asyncio.to_thread(stage.redis_server.start)
    stage.outcome.notes.append(
        f"Redis SIGKILLed with {recent} events acknowledged in the {RECENT_S:.0f} s before, "
        f"restarted {time.monotonic() - crashed:.1f} s later "
        f"(appendfsync {stage.redis_server.config['appendfsync']})"
    )
    if recent == 0:
        stage.outcome.problems.append(
            f"no event acknowledged in the {RECENT_S:.0f} s before Redis was killed"
        )
    return Expectation()


async def poison(stage: Stage) -> Expectation:
    """The load carries events the database refuses and resends of accepted ids with other
    content (with_poison); some of each must have been accepted."""
    await asyncio.sleep(stage.profile.steady_s)
    tally = stage.driver.tally
    if not tally.poison & tally.accepted_at.keys():
        stage.outcome.problems.append("no poison event was accepted")
    if not tally.conflicts:
        stage.outcome.problems.append("no conflicting resend was accepted")
    return Expectation()


async def sigterm(stage: Stage) -> Expectation:
    """SIGTERM every process at once while writers hold a batch (frozen until the signal):
    they must commit and ack it, and exit, within the grace period."""
    held = await freeze_holding(stage, stage.service.workers)
    exits = await stage.service.stop_all(SHUTDOWN_GRACE_S + 10)
    processes = [*stage.service.apis, *stage.service.workers]
    codes = {p.name: p.returncode or 0 for p in processes if p.process}
    slowest = max(exits.values())
    left = await pending_of(stage)
    stage.outcome.notes.append(
        f"SIGTERM to all with {held} entries in flight: slowest exit {slowest:.1f} s (grace "
        f"{SHUTDOWN_GRACE_S:.0f} s), {left} left pending, exit codes {sorted(set(codes.values()))}"
    )
    if not held:
        stage.outcome.problems.append(
            f"SIGTERM sent with no entries in flight (none held within {LAND_WITHIN_S:.0f} s)"
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
    return replace(plan, poison_every=25, conflict_every=20)


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
