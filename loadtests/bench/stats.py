"""Pure helpers: percentiles, medians, a least-squares slope, Prometheus histogram quantiles."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

from app.core.metrics import Buckets


def percentile(values: Sequence[float], share: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(ms: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of latencies, rounded to 0.01 ms (None when there are none)."""
    shares = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "max": 1.0}
    found = {name: percentile(ms, share) for name, share in shares.items()}
    return {name: None if v is None else round(v, 2) for name, v in found.items()}


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(p[0] for p in points)
    mean_y = statistics.fmean(p[1] for p in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def buckets_from_text(text: str, name: str) -> Buckets:
    """The `<name>_bucket` series of a Prometheus text exposition, summed over label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def add_buckets(a: Mapping[float, float], b: Mapping[float, float]) -> Buckets:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b)}
