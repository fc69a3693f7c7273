"""A timeline of the run, one sample per interval, and the summary of a measured window."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from app.core.metrics import Buckets, bucket_delta, histogram_quantile
from loadtests.bench.probe import Probe, Snapshot, cpu_percent

log = logging.getLogger("bench")


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the sampler started
    phase: str
    accepted_total: int
    persisted_total: int
    queued_events: int
    lag_p50_ms: float | None  # of the entries persisted since the previous sample
    lag_p99_ms: float | None
    rss_mb: dict[str, float]
    sockets: dict[str, int]  # open sockets per service process and Redis
    pg_backends: int | None  # connected to the bench database (the probe's own not counted)
    redis_clients: int | None  # connected to Redis (the probe's own not counted)


@dataclass(slots=True)
class Sampler:
    probe: Probe
    interval_s: float
    phase: str = "start"
    samples: list[Sample] = field(default_factory=list)
    lags: list[Buckets] = field(default_factory=list)  # the cumulative histogram at each sample
    missed: int = 0
    started: float = field(default_factory=time.monotonic)

    async def run(self) -> None:
        previous: Buckets = {}
        while True:
            try:
                stats, lag, groups = await asyncio.gather(
                    self.probe.stats(), self.probe.lag(), self.probe.process_groups()
                )
                rss = self.probe.rss_mb(groups)
                connections = await self.probe.connections(groups)
            except Exception as exc:  # a missed sample leaves a gap; the loop carries on
                self.missed += 1
                log.warning("sample failed: %s", type(exc).__name__)
            else:
                interval = bucket_delta(lag, previous)
                previous = lag
                self.samples.append(
                    Sample(
                        t=round(time.monotonic() - self.started, 3),
                        phase=self.phase,
                        accepted_total=int(stats["accepted_total"]),
                        persisted_total=int(stats["persisted_total"]),
                        queued_events=int(stats["queued_events"]),
                        lag_p50_ms=_ms(histogram_quantile(interval, 0.5)),
                        lag_p99_ms=_ms(histogram_quantile(interval, 0.99)),
                        rss_mb=rss,
                        sockets=connections.sockets,
                        pg_backends=connections.pg_backends,
                        redis_clients=connections.redis_clients,
                    )
                )
                self.lags.append(lag)
            await asyncio.sleep(self.interval_s)

    def between(self, start: float, end: float) -> list[Sample]:
        """Samples taken between the monotonic times `start` and `end`."""
        return [s for s in self.samples if start - self.started <= s.t <= end - self.started]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


@dataclass(frozen=True, slots=True)
class Window:
    """What the service did between two snapshots."""

    seconds: float
    accepted_per_s: float  # the server's count (queue stats)
    persisted_per_s: float
    lag_p50_ms: float | None  # from the writers' histogram: bucket deltas, interpolated
    lag_p99_ms: float | None
    queue_depth_max: int
    cpu_percent: dict[str, float]
    rss_mb_max: dict[str, float]


def window(before: Snapshot, after: Snapshot, samples: list[Sample]) -> Window:
    """`samples`: those of the sampler taken between the two snapshots."""
    seconds = after.at - before.at
    lag = bucket_delta(after.lag, before.lag)
    depths = [int(before.stats["queued_events"]), int(after.stats["queued_events"])]
    depths += [s.queued_events for s in samples]
    rss: dict[str, float] = {}
    for sample in samples:
        for name, mb in sample.rss_mb.items():
            rss[name] = max(rss.get(name, 0.0), mb)

    def rate(name: str) -> float:
        return (int(after.stats[name]) - int(before.stats[name])) / seconds if seconds else 0.0

    return Window(
        seconds=round(seconds, 2),
        accepted_per_s=round(rate("accepted_total"), 1),
        persisted_per_s=round(rate("persisted_total"), 1),
        lag_p50_ms=_ms(histogram_quantile(lag, 0.5)),
        lag_p99_ms=_ms(histogram_quantile(lag, 0.99)),
        queue_depth_max=max(depths),
        cpu_percent={k: round(v, 1) for k, v in cpu_percent(before, after).items()},
        rss_mb_max={k: round(v, 1) for k, v in rss.items()},
    )
