"""The long-running commands' one start, signal and stop (app.cli.lifecycle)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest

from app.cli.lifecycle import Parts, Stop, run_parts


def recording(events: list[str], fail_second: bool = False) -> Parts:
    @contextlib.asynccontextmanager
    async def parts(stop: Stop) -> AsyncIterator[None]:
        events.append("start first")
        try:
            events.append("start second")
            if fail_second:
                raise RuntimeError("the second part cannot start")
            try:
                yield
            finally:
                events.append("stop second")
        finally:
            events.append("stop first")

    return parts


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_the_parts_in_reverse(sig: signal.Signals) -> None:
    events: list[str] = []
    asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), sig)
    assert await run_parts("test", recording(events)) == 0
    assert events == ["start first", "start second", "stop second", "stop first"]
    # The handlers are gone with the command: the loop no longer catches the signal.
    assert not asyncio.get_running_loop().remove_signal_handler(sig)


async def test_a_part_ends_the_command_with_its_status() -> None:
    @contextlib.asynccontextmanager
    async def parts(stop: Stop) -> AsyncIterator[None]:
        asyncio.get_running_loop().call_later(0.1, stop.now, 3)
        yield

    assert await run_parts("test", parts) == 3


async def test_a_part_that_cannot_start_stops_those_started() -> None:
    events: list[str] = []
    with pytest.raises(RuntimeError, match="cannot start"):
        await run_parts("test", recording(events, fail_second=True))
    assert events == ["start first", "start second", "stop first"]
