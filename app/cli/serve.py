"""`python -m app serve` and `python -m app worker`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

from app.cli.lifecycle import Stop, run_until_signalled
from app.cli.migrate import require_urls
from app.core.config import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    import uvicorn

    from app.api.app import create_app
    from app.api.http_limits import HttpLimits, raise_open_files_limit
    from app.api.http_protocol import HttpProtocol
    from app.core.runtime import tune_gc

    require_urls(settings)
    limits = HttpLimits.from_settings(settings, raise_open_files_limit())
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        # httptools, head and body in one send, within the limits (a partial pickles, so
        # worker processes get it too)
        "http": functools.partial(HttpProtocol, limits=limits),
        # Nothing reads a client's address, so X-Forwarded-* headers are not looked for.
        "proxy_headers": False,
        "timeout_keep_alive": settings.keep_alive_s,
        "access_log": False,
        "server_header": False,
        "log_config": None,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) + 5,
    }
    if settings.api_processes > 1:  # each process builds its app from the same environment
        uvicorn.run(
            "app.api.app:create_app_from_env",
            factory=True,
            workers=settings.api_processes,
            **options,
        )
    else:
        app = create_app(settings)
        tune_gc()
        uvicorn.run(app, **options)


@contextlib.asynccontextmanager
async def worker_parts(settings: Settings, stop: Stop) -> AsyncIterator[None]:
    """Writers only, for scale-out: the process's resources, its metrics endpoint (when set),
    the writers and the threshold monitor; on the way out the writers drain in-flight batches."""
    from app.core.metrics import Metrics
    from app.core.metrics_server import MetricsServer
    from app.core.runtime import tune_gc
    from app.wiring import close_resources, open_resources
    from app.writer.group import WriterGroup

    res = await open_resources(settings, Metrics.create())
    metrics = None
    try:
        if settings.worker_metrics_port:
            metrics = MetricsServer(settings, res.metrics.registry)
            metrics.start()
        res.writers = WriterGroup(settings, res.engine, res.stream, res.metrics, res.recorder)
        res.writers.start()
        if settings.threshold_events:
            from app.monitor.thresholds import worker_monitor

            monitor = worker_monitor(res).run()
            res.background.append(asyncio.create_task(monitor, name="thresholds"))
        tune_gc()
        log.info("worker: %d writers", settings.writers)
        yield
    finally:
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
        await close_resources(res)  # drains the writers' in-flight batches


def worker_command(settings: Settings) -> int:
    require_urls(settings)
    return run_until_signalled("worker", functools.partial(worker_parts, settings))
