"""`python -m app serve` and `python -m app worker`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from typing import Any

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


async def run_worker(settings: Settings) -> None:
    """Writers only, for scale-out; SIGTERM or Ctrl-C drains in-flight batches, then exits."""
    from app.core.metrics import Metrics
    from app.core.runtime import tune_gc
    from app.wiring import close_resources, open_resources
    from app.writer.group import WriterGroup

    res = await open_resources(settings, Metrics.create())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = None
    if settings.worker_metrics_port:
        from app.writer.metrics_endpoint import serve_metrics

        server = await serve_metrics(settings, res.metrics.registry)
    res.writers = WriterGroup(settings, res.engine, res.stream, res.metrics)
    res.writers.start()
    if settings.threshold_events:
        from app.api.performance import worker_monitor

        monitor = worker_monitor(res).run()
        res.background.append(asyncio.create_task(monitor, name="thresholds"))
    tune_gc()
    log.info("worker running %d writers; stop with SIGTERM or Ctrl-C", settings.writers)
    try:
        await stop.wait()
        log.info("stopping: draining in-flight batches")
    finally:
        if server is not None:
            server.close()
        await close_resources(res)


def _worker(settings: Settings) -> None:
    require_urls(settings)
    import uvloop  # the event loop `serve` runs on, here too

    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(run_worker(settings))
