"""PNG charts of the timeline: throughput accepted and persisted, backlog, ingest-to-persist
lag; the measured phases shaded and named."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.bench.sampler import Sample

QUIET = frozenset({"start", "between", "drain"})


def spans(samples: Sequence[Sample]) -> list[tuple[str, float, float]]:
    """Contiguous (phase, first t, last t) of the measured phases."""
    found: list[tuple[str, float, float]] = []
    for s in samples:
        if s.phase in QUIET:
            continue
        if found and found[-1][0] == s.phase:
            found[-1] = (s.phase, found[-1][1], s.t)
        else:
            found.append((s.phase, s.t, s.t))
    return found


def rates(samples: Sequence[Sample]) -> tuple[list[float], list[float], list[float]]:
    """Per interval: time, accepted events/s, persisted events/s."""
    t, accepted, persisted = [], [], []
    for a, b in itertools.pairwise(samples):
        dt = b.t - a.t
        if dt > 0:
            t.append(b.t)
            accepted.append((b.accepted_total - a.accepted_total) / dt)
            persisted.append((b.persisted_total - a.persisted_total) / dt)
    return t, accepted, persisted


def _shade(ax: Any, samples: Sequence[Sample]) -> None:
    for i, (phase, start, end) in enumerate(spans(samples)):
        ax.axvspan(start, end, color="tab:gray", alpha=0.08 if i % 2 else 0.16, lw=0)
        short = phase.split(" ", 2)[-1]  # without "run N"
        if "ramp" not in short:
            ax.text(
                start,
                1.0,
                short,
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                va="bottom",
                rotation=30,
            )


def write_charts(samples: Sequence[Sample], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    t = [s.t for s in samples]
    rt, accepted, persisted = rates(samples)
    lag_t = [s.t for s in samples if s.lag_p50_ms is not None]
    series: list[tuple[str, str, list[tuple[str, list[float], list[float]]]]] = [
        ("throughput", "events/s", [("accepted", rt, accepted), ("persisted", rt, persisted)]),
        (
            "backlog",
            "events queued",
            [("queue depth", t, [float(s.queued_events) for s in samples])],
        ),
        (
            "lag",
            "ingest to persist, ms",
            [
                ("p50", lag_t, [s.lag_p50_ms or 0.0 for s in samples if s.lag_p50_ms is not None]),
                ("p99", lag_t, [s.lag_p99_ms or 0.0 for s in samples if s.lag_p50_ms is not None]),
            ],
        ),
    ]
    written = []
    for name, unit, lines in series:
        fig, ax = plt.subplots(figsize=(12, 4))
        for label, xs, ys in lines:
            ax.plot(xs, ys, label=label, lw=1)
        _shade(ax, samples)
        ax.set_xlabel("seconds since the service started")
        ax.set_ylabel(unit)
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
