"""The HTTP metrics, one family each, named and labelled as prometheus-fastapi-instrumentator
names its defaults: `http_requests_total{handler,method,status}` (the route's template, exact
statuses) and `http_request_duration_seconds{handler,method}`. The instrumentator's middleware
measures the framework's routes and hands each request to `instrumentation`; the fast ingest
path (app.api.fastpath) calls `observe` itself. The labelled series are kept once made: a
request costs two updates, not two label lookups."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_fastapi_instrumentator.metrics import Info

from app.core.metrics import SECONDS_BUCKETS


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ["handler", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Duration of HTTP requests in seconds",
            ["handler", "method"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        # Handlers are route templates ("none" for no route), methods the few HTTP has and
        # statuses the service's own: a bounded set of series.
        self._series: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def instrumentation(self, info: Info) -> None:
        self.observe(
            info.modified_handler, info.method, info.modified_status, info.modified_duration
        )

    def observe(self, handler: str, method: str, status: str, seconds: float) -> None:
        series = self._series.get((handler, method, status))
        if series is None:
            series = self._series[(handler, method, status)] = (
                self.requests.labels(handler, method, status),
                self.duration.labels(handler, method),
            )
        series[0].inc()
        series[1].observe(seconds)
