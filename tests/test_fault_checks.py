"""The fault harness's own checks (loadtests/faults), without servers: `account` on made-up
tallies and stored rows, and the scenarios' inject functions on a stage of stand-ins, so a check
that could not fail, or a fault that did not land, shows here."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import pytest

from loadtests.faults import scenarios
from loadtests.faults.checks import Expectation, Outcome, account
from loadtests.faults.driver import Tally
from loadtests.faults.harness import SHORT, Stage
from loadtests.faults.scenarios import redis_crash


def tally_of(accepted_at: dict[str, float]) -> Tally:
    tally = Tally()
    tally.sent.update(accepted_at)
    tally.accepted_at.update(accepted_at)
    return tally


def test_no_loss_is_allowed_without_a_window() -> None:
    tally = tally_of({"a": 1.0, "b": 2.0})
    out = Outcome("none")
    account(out, tally, {"a": 1}, {}, Expectation())
    assert (out.lost, out.lost_allowed) == (1, 0)
    assert out.problems == ["accepted (202) and never stored: b"]


def test_loss_is_allowed_only_inside_the_window() -> None:
    """The window is closed on both sides: an event acknowledged after the crash (or long
    before it) may not be lost."""
    accepted = {"before": 7.9, "first": 8.0, "inside": 9.0, "last": 10.0, "after": 10.1}
    tally = tally_of(accepted)
    out = Outcome("window")
    account(out, tally, {}, {}, Expectation(loss_allowed_between=(8.0, 10.0)))
    assert (out.lost, out.lost_allowed) == (5, 3)
    assert out.problems == ["accepted (202) and never stored: after, before"]


class FakeRedisServer:
    def __init__(self, appendfsync: str) -> None:
        self.appendfsync = appendfsync
        self.crashes = 0

    async def crash(self) -> None:
        self.crashes += 1

    async def start(self) -> None:
        pass


def stage_of(**parts: Any) -> Stage:
    """A stage of stand-ins: the short profile with no waits, a driver with an empty tally."""
    profile = replace(SHORT, redis_down_s=0.0)
    defaults: dict[str, Any] = {
        "profile": profile,
        "driver": SimpleNamespace(tally=Tally()),
        "outcome": Outcome("fake"),
    }
    return cast(Stage, SimpleNamespace(**(defaults | parts)))


async def test_a_redis_process_kill_may_lose_nothing() -> None:
    """A SIGKILL of redis-server alone keeps what it wrote to the OS before answering: no loss
    window with either fsync setting."""
    for appendfsync in ("always", "everysec"):
        stage = stage_of(redis_server=FakeRedisServer(appendfsync))
        stage.driver.tally.accept(["x"], time.monotonic())
        expect = await redis_crash(stage)
        assert expect == Expectation(), appendfsync
        assert stage.outcome.problems == [], appendfsync


class FakeProcess:
    """A service process that records the signals it gets."""

    def __init__(self, name: str, pid: int, port: int | None = None) -> None:
        self.name, self.pid, self.port = name, pid, port
        self.signals: list[str] = []
        self.process = SimpleNamespace(returncode=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, sig: signal.Signals) -> None:
        self.signals.append(sig.name)

    async def freeze(self) -> None:
        self.send(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send(signal.SIGCONT)

    async def kill(self) -> None:
        self.send(signal.SIGKILL)


class FakeService:
    def __init__(self, apis: int = 1, workers: int = 1) -> None:
        self.apis = [FakeProcess(f"api-{n}", 100 + n, 8000 + n) for n in range(apis)]
        self.workers = [FakeProcess(f"worker-{n}", 200 + n) for n in range(workers)]
        self.on_stop: list[Callable[[], None]] = []

    async def start(self, *processes: FakeProcess) -> None:
        pass

    async def stop_all(self, grace_s: float) -> dict[str, float]:
        for process in [*self.apis, *self.workers]:
            process.send(signal.SIGTERM)
        for hook in self.on_stop:
            hook()
        return {p.name: 0.1 for p in [*self.apis, *self.workers]}


class FakeRedis:
    """XPENDING of one stream: `held[pid]` entries pending for a consumer of that process."""

    def __init__(self) -> None:
        self.held: dict[int, int] = {}

    async def xpending(self, key: str, group: str) -> dict[str, Any]:
        if key != "high":
            return {"pending": 0, "consumers": []}
        consumers = [
            {"name": f"host:{pid}:0:abc".encode(), "pending": n} for pid, n in self.held.items()
        ]
        return {"pending": sum(self.held.values()), "consumers": consumers}


def service_stage(service: FakeService, client: FakeRedis) -> Stage:
    return stage_of(
        profile=replace(SHORT, writer_kills=2, api_kills=2),
        service=service,
        client=client,
        keys=SimpleNamespace(high="high", normal="normal"),
        driver=SimpleNamespace(tally=Tally(), open_requests=Counter[str]()),
    )


@pytest.fixture
def quick_landing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faults wait 50 ms for their moment, not seconds, and the scenarios' pauses take no time."""
    monkeypatch.setattr(scenarios, "LAND_WITHIN_S", 0.05, raising=False)
    monkeypatch.setattr(asyncio, "sleep", no_wait)


async def no_wait(seconds: float) -> None:
    await real_sleep(0)


real_sleep = asyncio.sleep


@pytest.mark.usefixtures("quick_landing")
async def test_a_writer_kill_that_is_not_mid_batch_is_a_problem() -> None:
    stage = service_stage(FakeService(workers=2), FakeRedis())
    await scenarios.writer_kill(stage)
    assert any("not mid-batch" in p for p in stage.outcome.problems), stage.outcome


@pytest.mark.usefixtures("quick_landing")
async def test_a_writer_is_killed_frozen_while_it_holds_entries() -> None:
    service, client = FakeService(workers=2), FakeRedis()
    client.held = {200: 3, 201: 5}
    stage = service_stage(service, client)
    await scenarios.writer_kill(stage)
    assert stage.outcome.problems == []
    for worker in service.workers:
        assert worker.signals[-2:] == ["SIGSTOP", "SIGKILL"]


@pytest.mark.usefixtures("quick_landing")
async def test_a_sigterm_with_nothing_in_flight_is_a_problem() -> None:
    stage = service_stage(FakeService(apis=2, workers=2), FakeRedis())
    await scenarios.sigterm(stage)
    assert any("no entries in flight" in p for p in stage.outcome.problems), stage.outcome


@pytest.mark.usefixtures("quick_landing")
async def test_sigterm_reaches_writers_frozen_with_entries_in_flight() -> None:
    service, client = FakeService(apis=2, workers=2), FakeRedis()
    client.held = {201: 4}
    service.on_stop.append(client.held.clear)  # the writers commit and ack on their way out
    stage = service_stage(service, client)
    await scenarios.sigterm(stage)
    assert stage.outcome.problems == []
    for worker in service.workers:
        assert worker.signals[-2:] == ["SIGSTOP", "SIGTERM"]


@pytest.mark.usefixtures("quick_landing")
async def test_an_api_kill_with_no_request_open_is_a_problem() -> None:
    stage = service_stage(FakeService(apis=2), FakeRedis())
    await scenarios.api_kill(stage)
    assert any("no request open" in p for p in stage.outcome.problems), stage.outcome


@pytest.mark.usefixtures("quick_landing")
async def test_an_api_is_killed_while_a_request_to_it_is_open() -> None:
    service = FakeService(apis=2)
    stage = service_stage(service, FakeRedis())
    stage.driver.open_requests[service.apis[0].url] = 1
    await scenarios.api_kill(stage)
    assert stage.outcome.problems == []
    assert service.apis[0].signals.count("SIGKILL") == 2
