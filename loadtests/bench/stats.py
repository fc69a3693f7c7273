"""Percentiles, medians and the backlog's trend (the standard library's statistics), and
Prometheus histogram buckets read from a text exposition."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

from app.core.metrics import Buckets

# Percentiles are statistics.quantiles' "inclusive" method: linear interpolation between the
# closest ranks (R's type 7, numpy's default), the definition every latency figure in
# BENCHMARKS.md was computed with.
METHOD: Final[Literal["inclusive"]] = "inclusive"


def centiles(values: Sequence[float]) -> list[float]:
    """The 99 cut points between the percentiles of `values` (index 98 is p99); [] when empty."""
    if len(values) < 2:  # quantiles wants two points before Python 3.13
        return list(values) * 99
    return statistics.quantiles(values, n=100, method=METHOD)


def percentile(values: Sequence[float], centile: int) -> float | None:
    """The `centile`th percentile (1 to 99) of `values`; None when there are none."""
    cuts = centiles(values)
    return cuts[centile - 1] if cuts else None


def latency_summary(ms: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of latencies, rounded to 0.01 ms (None when there are none)."""
    cuts = centiles(ms)
    if not cuts:
        return dict.fromkeys(("p50", "p95", "p99", "max"))
    found = {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": max(ms)}
    return {name: round(v, 2) for name, v in found.items()}


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values present (None: a run without the figure); None when none is."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    x, y = zip(*points, strict=True)
    try:
        return statistics.linear_regression(x, y).slope
    except statistics.StatisticsError:  # every x the same
        return 0.0


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
