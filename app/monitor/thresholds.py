"""The service watching itself: every AUDIT_THRESHOLD_CHECK_S each process compares what it
measures (queue depth, ingest-to-persist p99, the share of 5xx answers, its resident memory) with
its thresholds and records each one exceeded as an audit event, `performance.threshold.violation`
of organization AUDIT_OPERATIONS_ORG, sealed like any other. One threshold gives at most one
event per process every AUDIT_THRESHOLD_EVENT_INTERVAL_S; the ones held back are counted in the
next (`details.suppressed`) and in `audit_threshold_violations_total`."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import Histogram
from prometheus_client.metrics import MetricWrapperBase

from app.core.caller import Caller
from app.core.config import Settings
from app.core.metrics import Buckets, Metrics, bucket_delta, histogram_quantile
from app.core.tasks import wait_or_stop
from app.core.timefmt import format_timestamp
from app.events.model import EventIn
from app.queue.admission import Admission
from app.queue.recorder import Recorder

log = logging.getLogger(__name__)
MONITOR = "performance-monitor"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Violation:
    metric: str
    value: float
    threshold: float
    unit: str


def rss_mb() -> float:
    """This process's resident memory in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE / 2**20


def _samples(metric: MetricWrapperBase) -> Iterable[Any]:
    """The samples of one metric (not a walk of the whole registry, whose process collector
    would read /proc each time)."""
    for family in metric.collect():
        yield from family.samples


def histogram_buckets(histogram: Histogram) -> Buckets:
    """Cumulative counts by upper bound of a histogram without labels."""
    return {
        float(s.labels["le"]): s.value for s in _samples(histogram) if s.name.endswith("_bucket")
    }


HTTP_REQUESTS = "http_requests_total"  # the instrumentator's family (app.api.app)


def responses(metrics: Metrics) -> tuple[float, float]:
    """All HTTP answers and the 5xx among them, so far (none in a process without the API)."""
    total = errors = 0.0
    for family in metrics.registry.restricted_registry([HTTP_REQUESTS]).collect():
        for sample in family.samples:
            if sample.name == HTTP_REQUESTS:
                total += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
    return total, errors


@dataclass
class Measures:
    """What one process measures, in the window since the previous check."""

    metrics: Metrics
    queue_depth: Callable[[], int]
    _lag: Buckets = field(default_factory=dict)
    _answers: tuple[float, float] = (0.0, 0.0)

    def take(self, settings: Settings) -> list[Violation]:
        found = []
        depth = self.queue_depth()
        if depth > settings.threshold_queue_depth:
            found.append(Violation("queue_depth", depth, settings.threshold_queue_depth, "events"))
        lag = histogram_buckets(self.metrics.ingest_to_persist_seconds)
        p99 = histogram_quantile(bucket_delta(lag, self._lag), 0.99)
        self._lag = lag
        if p99 is not None and p99 > settings.threshold_lag_p99_s:
            found.append(Violation("ingest_to_persist_p99", p99, settings.threshold_lag_p99_s, "s"))
        total, errors = responses(self.metrics)
        answered, failed = total - self._answers[0], errors - self._answers[1]
        self._answers = (total, errors)
        if answered > 0 and failed / answered > settings.threshold_error_rate:
            rate = failed / answered
            found.append(Violation("error_rate", rate, settings.threshold_error_rate, "share"))
        unwitnessed = max(
            (s.value for s in _samples(self.metrics.unwitnessed_seconds)), default=0.0
        )
        if unwitnessed > settings.threshold_unwitnessed_s:
            found.append(
                Violation("log_unwitnessed", unwitnessed, settings.threshold_unwitnessed_s, "s")
            )
        memory = rss_mb()
        if memory > settings.threshold_rss_mb:
            found.append(Violation("memory_rss", memory, settings.threshold_rss_mb, "MiB"))
        return found


class Watched(Protocol):
    """What the monitor runs on: a process's resources (app.wiring.Resources has them)."""

    settings: Settings
    metrics: Metrics
    recorder: Recorder
    admission: Admission
    stopping: asyncio.Event


@dataclass
class ThresholdMonitor:
    res: Watched
    process: str  # "api" or "worker"
    measures: Measures
    _last_event: dict[str, float] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    async def check(self) -> int:
        """Compare once; returns how many violation events were queued."""
        settings = self.res.settings
        queued = 0
        for violation in self.measures.take(settings):
            self.res.metrics.threshold_violations.labels(metric=violation.metric).inc()
            now = time.monotonic()
            last = self._last_event.get(violation.metric)
            if last is not None and now - last < settings.threshold_event_interval_s:
                self._suppressed[violation.metric] = self._suppressed.get(violation.metric, 0) + 1
                continue
            if await self._record(violation):
                self._last_event[violation.metric] = now
                queued += 1
        return queued

    async def _record(self, violation: Violation) -> bool:
        settings = self.res.settings
        suppressed = self._suppressed.get(violation.metric, 0)
        event = EventIn(
            action="performance.threshold.violation",
            status="failure",
            principal_id=MONITOR,
            principal_type="service",
            data_classification="INTERNAL",
            priority="high",
            details={
                "metric": violation.metric,
                "value": round(violation.value, 6),
                "threshold": violation.threshold,
                "unit": violation.unit,
                "violation_ratio": round(violation.value / violation.threshold, 6)
                if violation.threshold
                else None,
                "process": self.process,
                "pid": os.getpid(),
                "suppressed": suppressed,
            },
            outcome_description=(
                f"Performance threshold exceeded: {violation.metric} = {violation.value:.6g} "
                f"{violation.unit} (threshold {violation.threshold:g})"
            ),
        )
        record = event.to_record(settings.operations_org, format_timestamp(datetime.now(UTC)))

        try:
            monitor = Caller(MONITOR, settings.operations_org, frozenset())
            await self.res.recorder.record(monitor, record, rated=False, quota=False)
        except Exception as exc:  # the queue full or Redis down: the metric still counts it
            log.warning("threshold violation not recorded: %s", type(exc).__name__)
            return False
        self._suppressed[violation.metric] = 0
        return True

    async def run(self) -> None:
        interval = self.res.settings.threshold_check_s
        while not self.res.stopping.is_set():
            await wait_or_stop(self.res.stopping, interval)
            if self.res.stopping.is_set():
                return
            try:
                await self.check()
            except Exception as exc:
                log.warning("threshold check failed: %s", type(exc).__name__)


def api_monitor(res: Watched) -> ThresholdMonitor:
    """For an API process: the queue depth its admission knows (polled from Redis)."""
    return ThresholdMonitor(res, "api", Measures(res.metrics, lambda: res.admission.queued_events))


def worker_monitor(res: Watched) -> ThresholdMonitor:
    """For a worker process: it has no depth poll of its own; the API processes watch that."""
    return ThresholdMonitor(res, "worker", Measures(res.metrics, lambda: 0))
