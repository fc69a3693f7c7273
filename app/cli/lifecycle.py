"""One start, signal and stop for the long-running commands (`worker`, `syslog`, `witness`).

A command gives an async context manager that starts its parts on entry and stops them on exit
(in reverse order, each in a `finally`); `run_until_signalled` runs it on uvloop until SIGTERM or
SIGINT (Ctrl-C), or until a part asks to stop (`Stop.now`, e.g. a server that ended), and
returns the exit status the command set (0 unless it set another).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class Stop:
    """What a running command waits for; a part may end it early with an exit status."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 0

    def now(self, status: int = 0) -> None:
        self.status = self.status or status
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


Parts = Callable[[Stop], AbstractAsyncContextManager[object]]


async def run_parts(name: str, parts: Parts) -> int:
    """Start `parts`, wait for a signal or `Stop.now`, stop them; the exit status."""
    stop = Stop()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop.now)
    try:
        async with parts(stop):
            log.info("%s running; stop with SIGTERM or Ctrl-C", name)
            await stop.wait()
            log.info("%s stopping", name)
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    return stop.status


def run_until_signalled(name: str, parts: Parts) -> int:
    """`run_parts` on uvloop (the event loop `serve` runs on); the exit status."""
    import uvloop

    status = 0
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        status = runner.run(run_parts(name, parts))
    return status
