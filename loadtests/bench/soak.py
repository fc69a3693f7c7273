"""The steady phase window by window (--soak-window seconds, 30): throughput, backlog, request
latency, ingest-to-persist lag, memory and open connections of each window; and whether each
figure that must not grow does: the mean of the last three windows against the mean of the first
three after the warm-up (--soak-warmup seconds), fewer when the phase is short."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from app.core.metrics import bucket_delta, histogram_quantile
from loadtests.bench.sampler import Sampler
from loadtests.bench.stats import percentile

N = TypeVar("N", int, float)
COMPARED = 3  # windows averaged at each end
# A change of the mean within max(absolute, share x the first mean) reads "flat".
TOLERANCE: dict[str, tuple[float, float]] = {
    "queue depth": (1000.0, 0.25),
    "request p99 ms": (10.0, 0.25),
    "lag p99 ms": (10.0, 0.25),
    "RSS MB": (2.0, 0.02),
    "sockets": (0.5, 0.0),
    "PG backends": (0.5, 0.0),
    "Redis clients": (0.5, 0.0),
}


@dataclass(frozen=True, slots=True)
class SoakRow:
    start_s: float  # of the window, since the phase began
    seconds: float  # between the samples that bound it
    accepted_per_s: float  # the server's counts
    persisted_per_s: float
    queue_depth_max: int
    latency_p99_ms: float | None  # of the requests answered in the window
    lag_p99_ms: float | None  # ingest to persist: the writers' histogram, bucket deltas
    rss_mb: dict[str, float]  # the most sampled in the window, per process
    sockets: dict[str, int]  # the most sampled in the window, per process
    pg_backends: int | None  # the most sampled in the window
    redis_clients: int | None

    def measures(self) -> dict[str, float | None]:
        """What must not grow, by name (the name starts with its TOLERANCE key)."""
        found: dict[str, float | None] = {
            "queue depth": float(self.queue_depth_max),
            "request p99 ms": self.latency_p99_ms,
            "lag p99 ms": self.lag_p99_ms,
        }
        found |= {f"RSS MB {name}": mb for name, mb in self.rss_mb.items()}
        found |= {f"sockets {name}": float(n) for name, n in self.sockets.items()}
        found["PG backends"] = _float(self.pg_backends)
        found["Redis clients"] = _float(self.redis_clients)
        return found


@dataclass(frozen=True, slots=True)
class Soak:
    window_s: float
    warmup_s: float
    compared: int  # windows averaged at each end; 0: too few windows after the warm-up
    rows: list[SoakRow]
    trend: dict[str, str]  # measure -> "flat (+0.4)", "grew by 9.5 (+8%)" or "fell by ..."


def soak(
    sampler: Sampler,
    phase: str,
    answered: tuple[list[float], list[float]],
    window_s: float,
    warmup_s: float,
) -> Soak:
    """`answered`: the latencies (ms) of the phase's requests and when each came (monotonic)."""
    rows = []
    groups = _groups(sampler, phase, window_s)
    for n, (key, group) in enumerate(groups):
        start = group[0] if n == 0 else groups[n - 1][1][-1]
        low = -math.inf if n == 0 else sampler.samples[start].t
        high = math.inf if n == len(groups) - 1 else sampler.samples[group[-1]].t
        latencies = _answered_between(sampler, answered, low, high)
        rows.append(_row(sampler, start, group, latencies, key * window_s))
    compared, verdicts = trend(rows, warmup_s)
    return Soak(window_s, warmup_s, compared, rows, verdicts)


def _answered_between(
    sampler: Sampler, answered: tuple[list[float], list[float]], low: float, high: float
) -> list[float]:
    """Latencies of the requests answered after `low` and by `high` (sampler seconds)."""
    latencies, at = answered
    return [ms for ms, t in zip(latencies, at, strict=True) if low < t - sampler.started <= high]


def _groups(sampler: Sampler, phase: str, window_s: float) -> list[tuple[int, list[int]]]:
    """The phase's samples (indices) per window number; a last window shorter than half a
    window joins the one before."""
    samples = sampler.samples
    indices = [i for i, s in enumerate(samples) if s.phase == phase]
    if not indices:
        return []
    t0 = samples[indices[0]].t
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(int((samples[i].t - t0) // window_s), []).append(i)
    ordered = sorted(groups.items())
    if len(ordered) > 1:
        span = samples[ordered[-1][1][-1]].t - samples[ordered[-2][1][-1]].t
        if span < window_s / 2:
            ordered[-2][1].extend(ordered.pop()[1])
    return ordered


def _row(
    sampler: Sampler, start: int, group: list[int], latencies: list[float], start_s: float
) -> SoakRow:
    """The window from sample `start` to the group's last sample."""
    first, last = sampler.samples[start], sampler.samples[group[-1]]
    seconds = last.t - first.t
    inside = [sampler.samples[i] for i in group]
    lag = histogram_quantile(bucket_delta(sampler.lags[group[-1]], sampler.lags[start]), 0.99)
    p99 = percentile(latencies, 99)

    def rate(after: int, before: int) -> float:
        return round((after - before) / seconds, 1) if seconds > 0 else 0.0

    return SoakRow(
        start_s=round(start_s, 1),
        seconds=round(seconds, 1),
        accepted_per_s=rate(last.accepted_total, first.accepted_total),
        persisted_per_s=rate(last.persisted_total, first.persisted_total),
        queue_depth_max=max(s.queued_events for s in inside),
        latency_p99_ms=None if p99 is None else round(p99, 1),
        lag_p99_ms=None if lag is None else round(lag * 1000, 1),
        rss_mb={k: round(v, 1) for k, v in _most([s.rss_mb for s in inside]).items()},
        sockets=_most([s.sockets for s in inside]),
        pg_backends=_top([s.pg_backends for s in inside]),
        redis_clients=_top([s.redis_clients for s in inside]),
    )


def _most(values: Sequence[dict[str, N]]) -> dict[str, N]:
    top: dict[str, N] = {}
    for found in values:
        for name, value in found.items():
            top[name] = max(top.get(name, value), value)
    return top


def _top(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def trend(rows: Sequence[SoakRow], warmup_s: float) -> tuple[int, dict[str, str]]:
    """How many windows were averaged at each end, and per measure how its mean over the last
    windows compares with that over the first windows after the warm-up."""
    settled = [r for r in rows if r.start_s >= warmup_s]
    compared = min(COMPARED, len(settled) // 2)
    if compared == 0:
        return 0, {}
    first = [r.measures() for r in settled[:compared]]
    last = [r.measures() for r in settled[-compared:]]
    verdicts = {}
    for name in dict.fromkeys(k for m in first + last for k in m):
        before, after = _mean(m.get(name) for m in first), _mean(m.get(name) for m in last)
        if before is not None and after is not None:
            verdicts[name] = verdict(name, before, after)
    return compared, verdicts


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def verdict(name: str, before: float, after: float) -> str:
    """Within the measure's tolerance "flat (+0.4)", else "grew by 9.5 (+8%)" or "fell by
    ..."."""
    absolute, share = next((t for key, t in TOLERANCE.items() if name.startswith(key)), (0, 0))
    change = after - before
    shown = f"{abs(change):,.0f}" if abs(change) >= 100 else f"{abs(change):,.1f}"
    if abs(change) <= max(absolute, share * abs(before)):
        return f"flat ({'-' if change < 0 else '+'}{shown})"
    relative = f" ({change / before:+.0%})" if before else ""
    return f"{'grew' if change > 0 else 'fell'} by {shown}{relative}"
