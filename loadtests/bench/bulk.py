"""Bulk ingest: an open-loop ramp to the highest rate the service holds with a bounded backlog
and no failed request, a hold at that rate, and a steady phase at a fixed rate."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from loadtests.bench.context import Context
from loadtests.bench.driver import LoadResult, Target, open_loop
from loadtests.bench.payloads import bulk_pool
from loadtests.bench.progress import say
from loadtests.bench.sampler import Sample, Window
from loadtests.bench.soak import Soak, soak
from loadtests.bench.stats import latency_summary, slope

# A step whose backlog grows faster than this share of the offered rate is not holding.
GROWTH_SHARE = 0.05
HOLD_TRIES = 3  # a hold that fails is tried again a ramp step lower, this many holds in all


@dataclass(frozen=True, slots=True)
class BulkPhase:
    phase: str
    offered_events_per_s: float
    events_per_request: int
    accepted_events: int
    accepted_per_s: float  # the driver's count of events answered 202
    unknown_events: int  # in requests never answered: perhaps accepted
    failed: dict[str, int]
    waited: int  # requests due while every connection was busy, sent late
    unsent: int  # still waiting for a connection when the phase ended
    latency_ms: dict[str, float | None]  # from each request's send
    scheduled_latency_ms: dict[str, float | None]  # from when it was due (driver.py)
    max_behind_ms: float  # how late the driver sent its latest request (its own fidelity)
    backlog_growth_per_s: float
    holds: bool
    verdict: str
    service: Window
    soak: Soak | None = None  # the steady phase's, window by window


def backlog_floor(ctx: Context, rate: float) -> float:
    """A backlog this small is batching, not falling behind: a batch per writer, or half a
    second of load."""
    layout = ctx.options.layout
    writing = max(1, layout.worker_processes or layout.api_processes) * layout.writers
    return max(layout.batch_size * writing, rate / 2)


def judge(
    result: LoadResult, samples: list[Sample], rate: float, floor: float
) -> tuple[float, str]:
    """The backlog's growth (events/s, least squares over the later two thirds of the phase)
    and what went wrong, or "" when the rate holds."""
    later = samples[len(samples) // 3 :]
    growth = slope([(s.t, float(s.queued_events)) for s in later])
    if result.failures:
        return growth, result.problem()
    if growth > GROWTH_SHARE * rate and later and later[-1].queued_events > floor:
        return growth, f"backlog grows by {growth:,.0f} events/s"
    return growth, ""


async def drive_bulk(ctx: Context, phase: str, rate: float, bulk: int, seconds: float) -> BulkPhase:
    """Offer `rate` events/s in requests of `bulk` events for `seconds`, open loop."""
    measured, _ = await load_bulk(ctx, phase, rate, bulk, seconds)
    return measured


async def load_bulk(
    ctx: Context, phase: str, rate: float, bulk: int, seconds: float
) -> tuple[BulkPhase, LoadResult]:
    """drive_bulk's phase, and what the driver saw request by request."""
    service = ctx.service
    target = Target(
        tuple(service.api_urls),
        "/events/bulk",
        service.key,
        bulk_pool(bulk, ctx.options.pool_events),
        bulk,
        ctx.options.connections,
    )
    result, window = await ctx.measured(phase, open_loop(target, rate / bulk, seconds))
    samples = [s for s in ctx.sampler.samples if s.phase == phase]
    growth, problem = judge(result, samples, rate, backlog_floor(ctx, rate))
    measured = BulkPhase(
        phase=phase,
        offered_events_per_s=rate,
        events_per_request=bulk,
        accepted_events=result.accepted_events,
        accepted_per_s=round(result.events_per_s, 1),
        unknown_events=result.unanswered() * bulk,
        failed=result.failed,
        waited=result.waited,
        unsent=result.unsent,
        latency_ms=latency_summary(result.latencies_ms),
        scheduled_latency_ms=latency_summary(result.scheduled_ms),
        max_behind_ms=round(result.max_behind_ms, 1),
        backlog_growth_per_s=round(growth, 1),
        holds=not problem,
        verdict=problem or "holds",
        service=window,
    )
    return measured, result


@dataclass(slots=True)
class BulkRun:
    steps: list[BulkPhase] = field(default_factory=list)
    best_rate: float | None = None  # events/s of the hold (the last step that held, or lower)
    failed_holds: list[BulkPhase] = field(default_factory=list)  # tried a step higher
    hold: BulkPhase | None = None
    eighty: BulkPhase | None = None  # 80% of the held rate: where the latency target applies

    def phases(self) -> list[BulkPhase]:
        later = (p for p in (self.hold, self.eighty) if p is not None)
        return [*self.steps, *self.failed_holds, *later]


async def ramp_and_hold(ctx: Context, run: int) -> BulkRun:
    """Steps up from --ramp-start by --ramp-step until a step fails or its backlog grows, then
    holds the highest good rate; a hold that fails is tried again a step lower (HOLD_TRIES in
    all). The last hold is reported, flagged when it did not hold either."""
    o = ctx.options
    out = BulkRun()
    for step in range(o.ramp_max_steps):
        rate = o.ramp_start + step * o.ramp_step
        phase = await drive_bulk(ctx, f"run {run} ramp {rate:,.0f}/s", rate, o.bulk, o.step_seconds)
        out.steps.append(phase)
        say(f"  ramp {rate:>9,.0f} events/s: {phase.verdict}")
        if not phase.holds:
            break
        out.best_rate = rate
    await ctx.drain(o.drain_timeout)
    rate = out.best_rate or o.ramp_start
    for attempt in range(HOLD_TRIES):
        hold = await drive_bulk(ctx, f"run {run} hold {rate:,.0f}/s", rate, o.bulk, o.hold)
        say(f"  hold {rate:>9,.0f} events/s for {o.hold:.0f} s: {hold.verdict}")
        await ctx.drain(o.drain_timeout)
        lower = rate - o.ramp_step
        if hold.holds or attempt == HOLD_TRIES - 1 or lower < o.ramp_start:
            out.hold = hold
            break
        out.failed_holds.append(hold)  # a step held for seconds but not for the whole hold
        rate = out.best_rate = lower
    seconds = 2 * o.step_seconds
    out.eighty = await drive_bulk(ctx, f"run {run} bulk 80%", 0.8 * rate, o.bulk, seconds)
    p99 = out.eighty.latency_ms["p99"]
    say(f"  bulk {0.8 * rate:>9,.0f} events/s (80%): {out.eighty.verdict}, request p99 {p99} ms")
    await ctx.drain(o.drain_timeout)
    return out


async def steady(ctx: Context, run: int) -> BulkPhase:
    o = ctx.options
    name = f"run {run} steady"
    phase, result = await load_bulk(ctx, name, o.steady_rate, o.steady_bulk, o.steady)
    answered = (result.latencies_ms, result.answered_at)
    windows = soak(ctx.sampler, name, answered, o.soak_window, o.soak_warmup)
    say(f"  steady {o.steady_rate:,.0f} events/s: {phase.verdict}")
    await ctx.drain(o.drain_timeout)
    return replace(phase, soak=windows)
