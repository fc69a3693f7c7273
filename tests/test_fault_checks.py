"""The fault harness's own checks (loadtests/faults), without servers: `account` on made-up
tallies and stored rows, and the scenarios' inject functions on a stage of stand-ins, so a check
that could not fail, or a fault that did not land, shows here."""

from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

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
