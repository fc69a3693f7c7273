"""What every phase of a run shares, and the one way a phase is measured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from loadtests.bench.options import Options
from loadtests.bench.probe import Probe
from loadtests.bench.sampler import Sampler, Window, window
from loadtests.bench.service import Service

T = TypeVar("T")


@dataclass(slots=True)
class Context:
    options: Options
    service: Service
    probe: Probe
    sampler: Sampler

    async def measured(self, phase: str, load: Awaitable[T]) -> tuple[T, Window]:
        """Run `load`, with snapshots of the service on each side and the phase's label on the
        timeline."""
        self.sampler.phase = phase
        before = await self.probe.snapshot()
        result = await load
        after = await self.probe.snapshot()
        self.sampler.phase = "between"
        return result, window(before, after, self.sampler.between(before.at, after.at))

    async def drain(self, within_s: float) -> tuple[bool, dict[str, Any]]:
        """Wait until nothing is queued, every accepted event is settled and the watch has
        examined and recorded everything (at most `within_s` seconds): whether it happened, and
        the last queue stats."""
        deadline = time.monotonic() + within_s
        self.sampler.phase = "drain"
        while True:
            stats = await self.probe.stats()
            settled = (
                stats["persisted_total"] + stats["dead_lettered_events"] + stats["discarded_events"]
            )
            if stats["queued_events"] == 0 and settled == stats["accepted_total"]:
                if await self.probe.watch_settled():
                    return True, stats
            if time.monotonic() > deadline:
                return False, stats
            await asyncio.sleep(0.1)
