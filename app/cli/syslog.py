"""`python -m app syslog`: the IHE ATNA syslog receiver (app.api.syslog_intake) until SIGTERM
or Ctrl-C; its writers run elsewhere (`serve` or `worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from app.core.config import Settings

log = logging.getLogger(__name__)


async def run_syslog(settings: Settings) -> None:
    from app.api.syslog_intake import start_server
    from app.core.metrics import Metrics
    from app.wiring import close_resources, open_resources, poll_queue_depth

    res = await open_resources(settings, Metrics.create())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    res.background.append(asyncio.create_task(poll_queue_depth(res), name="depth"))
    metrics = None
    try:
        server = await start_server(res)
        if settings.worker_metrics_port:
            from app.writer.metrics_endpoint import serve_metrics

            metrics = await serve_metrics(settings, res.metrics.registry)
        where = ", ".join(str(s.getsockname()) for s in server.sockets)
        log.info("syslog receiver on %s (%s)", where, "TLS" if settings.syslog_tls_cert else "TCP")
        async with server:
            await stop.wait()
    finally:
        if metrics is not None:
            metrics.close()
        await close_resources(res)


def syslog_command(settings: Settings) -> int:
    import uvloop

    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(run_syslog(settings))
    return 0
