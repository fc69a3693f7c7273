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
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from app.events.model import EventIn, SessionContext
from loadtests.faults import scenarios
from loadtests.faults.checks import Expectation, Outcome, account
from loadtests.faults.content import digest, sent_content, stored_content
from loadtests.faults.driver import LoadDriver, LoadPlan, Tally, event_body
from loadtests.faults.harness import SHORT, Stage
from loadtests.faults.scenarios import redis_crash


def tally_of(accepted_at: dict[str, float]) -> Tally:
    """Events sent (all with the same made-up content digest) and acknowledged at these times."""
    tally = Tally()
    for event_id, at in accepted_at.items():
        tally.sent[event_id] = SAME
        tally.accept([event_id], at)
    return tally


SAME = b"content"


def test_no_loss_is_allowed_without_a_window() -> None:
    tally = tally_of({"a": 1.0, "b": 2.0})
    out = Outcome("none")
    account(out, tally, {"a": [SAME]}, {}, Expectation())
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
        self.config = {"appendfsync": appendfsync}
        self.crashes = 0

    def crash(self) -> None:
        self.crashes += 1

    def start(self) -> None:
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
        self.returncode = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, sig: signal.Signals) -> None:
        self.signals.append(sig.name)

    async def freeze(self) -> None:
        self.send(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send(signal.SIGCONT)

    async def killed(self) -> None:
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


EVENT_ID = "0195a6b2-0c4d-7e8f-9a0b-1c2d3e4f5a6b"
# An event with every field a client may send but one (data_classification: its default).
EVENT: dict[str, Any] = {
    "event_id": EVENT_ID,
    "timestamp": "2026-03-01T14:30:00.123456+02:00",
    "action": "fhir.patient.read",
    "status": "success",
    "principal_id": "dr-1",
    "principal_type": "practitioner",
    "target_resource_type": "Patient",
    "target_resource_id": "Patient/p-1",
    "patient_id": "p-1",
    "purpose_of_use": "TREAT",
    "break_glass": True,
    "outcome_description": "emergency access",
    "correlation_id": "c-1",
    "session_context": {"session_id": "s-1", "ip_address": "2001:DB8::1", "user_agent": "ua"},
    "details": {"b": [1, 2.5], "a": {"y": None, "x": "z"}},
    "priority": "high",
}
# ... and its row in audit_log: time in UTC, session flat, address normal, details as JSON text
# in another key order, with columns the server fills (api_key_id: one it may add).
ROW: dict[str, Any] = {
    "event_id": EVENT_ID,
    "timestamp": datetime(2026, 3, 1, 12, 30, 0, 123456, tzinfo=UTC),
    "action": "fhir.patient.read",
    "status": "success",
    "principal_id": "dr-1",
    "principal_type": "practitioner",
    "target_resource_type": "Patient",
    "target_resource_id": "Patient/p-1",
    "patient_id": "p-1",
    "data_classification": "INTERNAL",
    "purpose_of_use": "TREAT",
    "break_glass": True,
    "outcome_description": "emergency access",
    "correlation_id": "c-1",
    "session_id": "s-1",
    "ip_address": "2001:db8::1",
    "user_agent": "ua",
    "details": '{"a": {"x": "z", "y": null}, "b": [1, 2.5]}',
    "priority": "high",
    "organization_id": "faults",
    "received_at": datetime(2026, 3, 1, 12, 30, 1, tzinfo=UTC),
    "hash": b"\\x01" * 32,
    "key_id": "faults-1",
    "api_key_id": "7d3f",
}
# Every column that holds what the client sent, and another value for it.
OTHER_VALUES: dict[str, Any] = {
    "timestamp": datetime(2026, 3, 1, 12, 30, 0, 123457, tzinfo=UTC),
    "action": "fhir.patient.search",
    "status": "failure",
    "principal_id": "dr-2",
    "principal_type": "service",
    "target_resource_type": "Observation",
    "target_resource_id": "Patient/p-2",
    "patient_id": "p-2",
    "data_classification": "PHI",
    "purpose_of_use": "OPERATIONS",
    "break_glass": False,
    "outcome_description": "routine",
    "correlation_id": None,
    "session_id": "s-2",
    "ip_address": "2001:db8::2",
    "user_agent": None,
    "details": '{"a": {"x": "z", "y": null}, "b": [1, 2.6]}',
    "priority": "normal",
}


def content_outcome(
    row: dict[str, Any], tally: Tally | None = None, dead: dict[str, list[str]] | None = None
) -> Outcome:
    """Account for EVENT, sent and acknowledged (unless `tally` says otherwise), stored as
    `row`."""
    if tally is None:
        tally = Tally()
        tally.send([EVENT])
        tally.accept([EVENT_ID], 1.0)
    out = Outcome("content")
    stored = {EVENT_ID: [digest(stored_content(row))]}
    account(out, tally, stored, dead or {}, Expectation())
    return out


def test_a_row_stored_as_sent_passes() -> None:
    assert content_outcome(ROW).problems == []


def test_every_field_a_client_sends_is_compared() -> None:
    client_fields = set(EventIn.model_fields) - {"event_id", "session_context"}
    session_fields = set(SessionContext.model_fields)
    assert set(OTHER_VALUES) == client_fields | session_fields


@pytest.mark.parametrize("column", sorted(OTHER_VALUES))
def test_a_row_stored_with_one_field_changed_is_a_problem(column: str) -> None:
    out = content_outcome(ROW | {column: OTHER_VALUES[column]})
    assert out.problems == [f"stored with other content: {EVENT_ID}"]


def test_server_columns_do_not_count() -> None:
    row = ROW | {"received_at": datetime.now(UTC), "hash": b"\\x02" * 32, "api_key_id": None}
    assert content_outcome(row).problems == []


def test_a_conflicting_resend_leaves_the_original_stored() -> None:
    """The same id resent with other content: the row must still say what was sent first."""
    tally = Tally()
    tally.send([EVENT])
    tally.accept([EVENT_ID], 1.0)
    tally.conflicts_sent.add(EVENT_ID)
    tally.conflicts.add(EVENT_ID)
    tally.send([EVENT | {"principal_id": "faults-conflict-1"}])  # the first content stays owed
    dead = {EVENT_ID: ["conflict"]}
    assert content_outcome(ROW, tally, dead).problems == []
    conflicting = content_outcome(ROW | {"principal_id": "faults-conflict-1"}, tally, dead)
    assert conflicting.problems == [f"stored with other content: {EVENT_ID}"]


def test_the_driver_s_events_match_the_records_the_service_makes_of_them() -> None:
    """What the driver remembers of an event is what the service stores from it (the same
    defaults, the instant, the normal address), for events that use every field."""
    for n in range(60):
        event = event_body(n, "faults-user-1")
        record = EventIn.model_validate_json(orjson.dumps(event)).to_record("faults", "now")
        row = record | {"timestamp": datetime.fromisoformat(record["timestamp"])}
        assert digest(stored_content(row)) == digest(sent_content(event)), event


@pytest.mark.usefixtures("quick_landing")
async def test_a_poison_run_without_poison_or_conflicts_accepted_is_a_problem() -> None:
    stage = service_stage(FakeService(), FakeRedis())
    await scenarios.poison(stage)
    assert stage.outcome.problems == [
        "no poison event was accepted",
        "no conflicting resend was accepted",
    ]
    tally = stage.driver.tally
    tally.accept(["bad"], 1.0)
    tally.poison.add("bad")
    tally.conflicts.add("resent")
    stage.outcome.problems.clear()
    await scenarios.poison(stage)
    assert stage.outcome.problems == []


def test_a_conflicting_resend_reuses_only_an_id_acknowledged_long_enough_ago() -> None:
    """Resent within milliseconds, the other content can reach the database first (another
    writer takes it): the driver resends only ids acknowledged `conflict_age_s` before, stored
    by then, so the original content is owed."""
    plan = LoadPlan(conflict_every=1, conflict_age_s=2.0)
    old, fresh = event_body(1, "u-1"), event_body(2, "u-2")
    driver = LoadDriver(["http://api"], "key", plan)
    driver.remember_accepted(fresh, time.monotonic())
    _, events = driver._next_request()
    assert not any(e["principal_id"].startswith("faults-conflict-") for e in events)
    driver = LoadDriver(["http://api"], "key", plan)
    driver.remember_accepted(old, time.monotonic() - 3.0)
    driver.remember_accepted(fresh, time.monotonic())
    _, events = driver._next_request()
    assert [e["event_id"] for e in events] == [old["event_id"]]
    assert events[0]["principal_id"].startswith("faults-conflict-")
    assert events[0] | {"principal_id": old["principal_id"]} == old
