"""Stopping background tasks: ask first, cancel after a grace period, never hang."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 2.0


async def wait_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking early when `stopping` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def stop_tasks(tasks: Sequence[asyncio.Task[None]], grace_s: float) -> None:
    """Wait for tasks that were asked to stop; cancel what outlives the grace period.
    A task that swallows its cancellation (some client libraries do) is reported, not awaited
    forever."""
    if not tasks:
        return
    done, running = await asyncio.wait(tasks, timeout=grace_s)
    if running:
        log.warning("cancelling %d tasks still running after %.1f s", len(running), grace_s)
        for task in running:
            task.cancel()
        cancelled, stuck = await asyncio.wait(running, timeout=CANCEL_WAIT_S)
        done |= cancelled
        for task in stuck:
            log.error("task %s did not stop after cancellation", task.get_name())
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s ended with %r", task.get_name(), task.exception())
