"""`python -m app syslog`: the IHE ATNA syslog receiver (app.intake.syslog) until SIGTERM
or Ctrl-C; its writers run elsewhere (`serve` or `worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from app.cli.lifecycle import Stop, run_until_signalled
from app.core.config import Settings

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def syslog_parts(settings: Settings, stop: Stop) -> AsyncIterator[None]:
    """The process's resources, the queue depth poll, the receiver and the metrics endpoint."""
    from app.core.metrics import Metrics
    from app.core.metrics_server import MetricsServer
    from app.intake.syslog.receiver import start_server
    from app.wiring import close_resources, open_resources, poll_queue_depth

    res = await open_resources(settings, Metrics.create())
    metrics = None
    try:
        res.background.append(asyncio.create_task(poll_queue_depth(res), name="depth"))
        server = await start_server(res)
        if settings.worker_metrics_port:
            metrics = MetricsServer(settings, res.metrics.registry)
            metrics.start()
        where = ", ".join(str(s.getsockname()) for s in server.sockets)
        log.info("syslog receiver on %s (%s)", where, "TLS" if settings.syslog_tls_cert else "TCP")
        async with server:
            yield
    finally:
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
        await close_resources(res)


def syslog_command(settings: Settings) -> int:
    return run_until_signalled("syslog", functools.partial(syslog_parts, settings))
