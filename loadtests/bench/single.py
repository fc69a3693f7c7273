"""Single-event POST /events: requests/s and latency at saturation (closed loop: wrk when it is
installed, else Python processes) and at 80%, 60% and 40% of that rate (open loop: wrk paced to an
even schedule when it is installed, else h2load --rps, else Python processes); and each
generator's own ceiling on GET /healthz with the same connections, to show it is not what limits.

Each request is an event of the population (loadtests.bench.payloads: the single pool, its own
event id and time at each send), except with h2load, which sends one body again and again.
Paced phases are timed from each request's send and from its slot in the schedule (wrk and the
Python generator; h2load cannot tell its schedule)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from loadtests.bench import tools
from loadtests.bench.context import Context
from loadtests.bench.driver import Job, LoadResult, Target, closed_loop, in_processes
from loadtests.bench.options import Options
from loadtests.bench.payloads import single_pool
from loadtests.bench.progress import say
from loadtests.bench.sampler import Window
from loadtests.bench.stats import latency_summary

SATURATION_SHARE = 0.8
# Lower paced rates, as shares of saturation: where the latency targets hold.
LOWER_SHARES = (0.6, 0.4)
# The paced run keeps this many times the saturation connections open, so that a connection is
# free when a request is due even while some answers are slow.
PACED_SPARE = 2


@dataclass(frozen=True, slots=True)
class SinglePhase:
    phase: str
    generator: str
    connections: int
    offered_per_s: float | None  # None: closed loop
    requests: int
    ok: int
    failed: dict[str, int]
    requests_per_s: float
    latency_ms: dict[str, float | None]  # from each request's send
    # Open loop: from when each request was due (wrk, Python; not h2load): driver.py, wrk_events.lua
    scheduled_latency_ms: dict[str, float | None]
    unsent: int  # open loop: due requests that never found a free connection
    # Requests whose answer the generator never saw (time-outs; and for wrk and h2load, what is
    # in flight when they stop): the service may have accepted them.
    unknown_events: int
    # Open loop: how late the generator sent its latest request (every connection busy).
    max_behind_ms: float
    service: Window
    tool_latency_ms: dict[str, float | None] | None  # wrk's own percentiles (wrk_events.lua)


@dataclass(frozen=True, slots=True)
class Ceiling:
    generator: str
    used_for: str
    connections: int
    requests_per_s: float


def saturation_tool(options: Options) -> str:
    wanted = options.single_tool
    return "wrk" if wanted == "wrk" or (wanted == "auto" and tools.available("wrk")) else "python"


def open_loop_tool(options: Options) -> str:
    wanted = options.open_loop_tool
    if wanted != "auto":
        return wanted
    return next((t for t in ("wrk", "h2load") if tools.available(t)), "python")


def single_target(ctx: Context, path: str = "/events") -> Target:
    bodies = single_pool(ctx.options.pool_events // 2) if path == "/events" else None
    return Target(
        tuple(ctx.service.api_urls),
        path,
        ctx.service.key,
        bodies,
        1 if bodies else 0,
        ctx.options.single_connections,
    )


async def saturate(ctx: Context, target: Target, seconds: float) -> LoadResult:
    o = ctx.options
    if saturation_tool(o) == "wrk":
        return await tools.wrk(target, seconds, o.wrk_threads)
    return await in_processes(Job(target, seconds), o.python_processes)


def _with_spare(target: Target) -> Target:
    """The target with the paced run's connections (PACED_SPARE times the saturation's)."""
    return replace(target, connections=target.connections * PACED_SPARE)


async def offer(ctx: Context, target: Target, rate: float, seconds: float) -> LoadResult:
    tool = open_loop_tool(ctx.options)
    if tool == "wrk":
        return await tools.wrk(_with_spare(target), seconds, ctx.options.wrk_threads, rate)
    if tool == "h2load":
        return await tools.h2load(target, rate, seconds)
    return await in_processes(Job(target, seconds, rate), ctx.options.python_processes)


def single_phase(
    phase: str, tool: str, offered: float | None, result: LoadResult, window: Window
) -> SinglePhase:
    return SinglePhase(
        phase=phase,
        generator=tool,
        connections=result.connections,
        offered_per_s=None if offered is None else round(offered, 1),
        requests=result.sent,
        ok=result.ok,
        failed=result.failed,
        requests_per_s=round(result.requests_per_s, 1),
        latency_ms=latency_summary(result.latencies_ms),
        scheduled_latency_ms=latency_summary(result.scheduled_ms),
        unsent=result.unsent,
        unknown_events=result.unanswered(),
        max_behind_ms=round(result.max_behind_ms, 1),
        service=window,
        tool_latency_ms=result.tool_latency_ms,
    )


async def single_events(ctx: Context, run: int) -> tuple[SinglePhase, list[SinglePhase]]:
    """Saturation, then paced phases at SATURATION_SHARE and each of LOWER_SHARES of it."""
    o = ctx.options
    target = single_target(ctx)
    tool = saturation_tool(o)
    phase = f"run {run} single saturation"
    result, window = await ctx.measured(phase, saturate(ctx, target, o.single_seconds))
    saturated = single_phase(phase, tool, None, result, window)
    say(f"  single saturation ({tool}): {saturated.requests_per_s:,.0f} requests/s")
    await ctx.drain(o.drain_timeout)
    paced = []
    for share in (SATURATION_SHARE, *LOWER_SHARES):
        paced.append(await _paced(ctx, target, run, share, saturated.requests_per_s))
    return saturated, paced


async def _paced(
    ctx: Context, target: Target, run: int, share: float, saturation: float
) -> SinglePhase:
    rate = max(1.0, share * saturation)
    tool = open_loop_tool(ctx.options)
    phase = f"run {run} single {share:.0%}"
    result, window = await ctx.measured(phase, offer(ctx, target, rate, ctx.options.single_seconds))
    measured = single_phase(phase, tool, rate, result, window)
    sent, due = measured.latency_ms, measured.scheduled_latency_ms
    say(
        f"  single at {rate:,.0f}/s ({tool}): {measured.requests_per_s:,.0f}/s answered, "
        f"p50/p99 {sent['p50']}/{sent['p99']} ms from the send, "
        f"{due['p50']}/{due['p99']} ms from the schedule"
    )
    await ctx.drain(ctx.options.drain_timeout)
    return measured


async def ceilings(ctx: Context) -> list[Ceiling]:
    """Each generator, as configured for its phase, against GET /healthz."""
    o = ctx.options
    seconds = o.ceiling_seconds
    health = single_target(ctx, "/healthz")
    bulk = Target(health.urls, "/healthz", health.key, None, 0, o.connections)
    found = [
        Ceiling(
            "python (asyncio streams)",
            "bulk",
            o.connections,
            (await closed_loop(bulk, seconds)).requests_per_s,
        ),
    ]
    result = await saturate(ctx, health, seconds)
    found.append(
        Ceiling(saturation_tool(o), "single saturation", result.connections, result.requests_per_s)
    )
    paced_tool = open_loop_tool(o)
    if paced_tool == "wrk":
        result = await tools.wrk(_with_spare(health), seconds, o.wrk_threads)
        found.append(Ceiling("wrk", "single 80%", result.connections, result.requests_per_s))
    elif paced_tool == "h2load":
        result = await tools.h2load(health, None, seconds)
        found.append(Ceiling("h2load", "single 80%", result.connections, result.requests_per_s))
    for c in found:
        say(
            f"generator ceiling on /healthz: {c.generator} ({c.used_for}): "
            f"{c.requests_per_s:,.0f} requests/s",
        )
    return found
