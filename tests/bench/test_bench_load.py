"""The benchmark's load, without the service: the data it posts (a population of patients and
principals, drawn with a skew; bodies completed with fresh ids and times as they are sent) and
how the open-loop generators time requests when the service stalls (from the send, and from the
schedule: corrected for coordinated omission)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.events.model import EVENT_LIST, EventIn
from loadtests.bench import driver, tools
from loadtests.bench.driver import Target, open_loop
from loadtests.bench.payloads import MAX_AGE_S, bulk_pool, describe, single_pool
from loadtests.bench.population import PATIENTS, Population
from loadtests.bench.stats import latency_summary, percentile, slope

STALL_S = 0.5


def test_the_population_is_large_varied_and_skewed() -> None:
    events = Population(7).events(20_000)
    patients = collections.Counter(e["patient_id"] for e in events if "patient_id" in e)
    principals = collections.Counter(e["principal_id"] for e in events)
    about = sum(patients.values())

    assert len(patients) > 9_000  # a long tail: most patients appear once or twice
    hottest = sum(n for _, n in patients.most_common(PATIENTS // 100))
    assert 0.25 < hottest / about < 0.5  # and a few hot ones
    assert len(principals) > 3_000
    assert principals.most_common(1)[0][1] / len(events) < 0.1
    services = sum(1 for e in events if e["principal_type"] == "service")
    assert 0.25 < services / len(events) < 0.35
    assert 0 < sum(1 for e in events if e.get("break_glass")) < 0.005 * len(events)
    for field in ("action", "status", "data_classification", "purpose_of_use"):
        assert len({e.get(field) for e in events}) >= 3, field
    sessions = [e["session_context"] for e in events]
    assert len({s["session_id"] for s in sessions}) > 3_000
    assert len({s["ip_address"] for s in sessions}) > 3_000
    assert len({s["user_agent"] for s in sessions}) > 5
    assert len({e["correlation_id"] for e in events}) > 0.6 * len(events)
    sizes = sorted(len(json.dumps(e.get("details"))) for e in events)
    assert sizes[len(sizes) // 2] < 200 < 1_000 < sizes[-1]
    EVENT_LIST.validate_python(events, strict=False)  # every one valid as the service sees it


def test_bulk_bodies_hold_the_population_and_fresh_times() -> None:
    pool = bulk_pool(100, 20_000)
    held = describe(pool)
    assert held["bodies"] == 200 and held["events"] == 20_000
    assert held["patients"] > 9_000 and held["principals"] > 3_000

    writer = pool.writer(seed=1)
    sent = [EVENT_LIST.validate_json(writer.next_body(), strict=True) for _ in range(3)]
    now = datetime.now(UTC)
    times = [e.timestamp for events in sent for e in events if e.timestamp]
    assert len(times) == 300
    assert all(now - timedelta(seconds=MAX_AGE_S + 2) < t < now for t in times)
    assert all(e.event_id is None for events in sent for e in events)  # the service gives ids
    assert len({e.patient_id for events in sent for e in events}) > 200


def test_single_bodies_get_a_fresh_event_id_at_every_send() -> None:
    pool = single_pool(4)
    writer = pool.writer(seed=0)
    first = [EventIn.model_validate_json(writer.next_body(), strict=True) for _ in range(8)]
    assert len({e.event_id for e in first}) == 8  # each template sent twice, ids all new
    assert {e.event_id.version for e in first if e.event_id} == {7}


@contextlib.asynccontextmanager
async def stalling_clients(target: Target) -> AsyncIterator[list[Any]]:
    """Connections to a service that answers in 1 ms, except from 0.5 s after the first request
    for STALL_S, when nothing is answered."""
    started: list[float] = []

    class Stalling:
        async def exchange(self, *body: bytes | None) -> int:
            now = time.perf_counter()
            started.append(now)
            stall_at = started[0] + 0.5
            await asyncio.sleep(0.001)
            if now < stall_at + STALL_S and time.perf_counter() > stall_at:
                await asyncio.sleep(stall_at + STALL_S - time.perf_counter())
            return 202

        def close(self) -> None:
            return None

    yield [Stalling() for _ in range(target.connections * len(target.urls))]


async def test_latency_from_the_schedule_shows_a_stall_the_send_hides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 requests/s for 2 s on 2 connections; the service stalls for half a second. The two
    requests in flight take the stall; the hundred due during it wait for a connection, then
    are answered in 1 ms each. Timed from their send, the stall is two requests in 400; timed
    from when they were due, it is a quarter of them."""
    monkeypatch.setattr(driver, "clients", stalling_clients)
    target = Target(("http://127.0.0.1:1",), "/events", "key", None, 1, 2)

    result = await open_loop(target, 200, 2.0)

    assert result.sent == 400  # every due request is sent, late when it must wait
    assert result.waited >= 80
    from_send = percentile(result.latencies_ms, 99)
    from_schedule = percentile(result.scheduled_ms, 99)
    assert from_send is not None and from_send < 100
    assert from_schedule is not None and from_schedule > 300
    assert len(result.scheduled_ms) == len(result.latencies_ms) == result.ok == 400


async def test_requests_never_sent_count_with_the_time_they_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stall over the end of the schedule: requests still waiting for a connection when it
    ends are not sent, and count in the latency from the schedule with their wait so far."""
    monkeypatch.setattr(driver, "clients", stalling_clients)
    target = Target(("http://127.0.0.1:1",), "/events", "key", None, 1, 1)

    result = await open_loop(target, 100, 0.8)

    assert result.unsent > 0
    assert result.sent + result.unsent == 80
    assert len(result.scheduled_ms) == result.ok + result.unsent
    assert "not sent by the end" in result.problem()


def test_percentiles_interpolate_between_the_closest_ranks() -> None:
    """The definition behind every latency figure in BENCHMARKS.md (numpy's default, R's type
    7): position p x (n - 1) in the sorted values, linear between its neighbours."""
    shuffled = [float(v) for v in random.Random(3).sample(range(1, 101), 100)]
    assert percentile(shuffled, 99) == pytest.approx(99.01)
    assert percentile(shuffled, 50) == pytest.approx(50.5)
    four = [40.0, 10.0, 30.0, 20.0]
    assert percentile(four, 95) == pytest.approx(38.5)
    assert latency_summary(four) == {"p50": 25.0, "p95": 38.5, "p99": 39.7, "max": 40.0}
    assert latency_summary([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0}
    assert latency_summary([]) == {"p50": None, "p95": None, "p99": None, "max": None}
    assert percentile([], 99) is None


def test_the_backlog_trend_is_a_least_squares_slope() -> None:
    assert slope([(0.0, 100.0), (1.0, 300.0), (2.0, 500.0)]) == pytest.approx(200.0)
    assert slope([(0.0, 0.0), (1.0, 10.0), (2.0, 0.0), (3.0, 10.0)]) == pytest.approx(2.0)
    assert slope([(5.0, 1.0), (5.0, 9.0)]) == 0.0  # one instant: no trend
    assert slope([(1.0, 1.0)]) == slope([]) == 0.0


def test_wrk_histograms_become_latencies() -> None:
    assert tools.expand({"5": 2, "12005": 1}) == [0.005, 0.005, 12.005]


class EchoingService:
    """A bare HTTP/1.1 server answering each POST /events 202 with the event id of its body,
    after 1 ms, except for `stall_s` from `stall_at_s` after it started."""

    def __init__(self, stall_at_s: float, stall_s: float) -> None:
        self.started = time.perf_counter()
        self.stall_at_s = stall_at_s
        self.stall_s = stall_s
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: set[asyncio.Task[Any]] = set()
        self.closing = asyncio.Event()

    async def __aenter__(self) -> EchoingService:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closing.set()  # a stall ends when the service does
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                event = json.loads(await reader.readexactly(length))
                await asyncio.sleep(0.001)
                stall_at = self.started + self.stall_at_s
                if stall_at < time.perf_counter() < stall_at + self.stall_s:
                    remaining = stall_at + self.stall_s - time.perf_counter()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.closing.wait(), remaining)
                body = json.dumps({"event_id": event["event_id"]}, separators=(",", ":"))
                writer.write(
                    b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body.encode())
                )
                await writer.drain()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
async def test_wrk_times_each_request_from_its_slot(tmp_path: Path) -> None:
    """The wrk script, paced at 200 requests/s on 2 connections for 2 s against a service that
    stalls for half a second: every answer is matched to its request by its event id."""
    async with EchoingService(0.6, STALL_S) as service:
        url = f"http://127.0.0.1:{service.port}"
        target = Target((url,), "/events", "key", single_pool(64), 1, 2)
        result = await tools.wrk(target, 2, 1, 200)

    assert result.ok > 300 and not result.failed and result.unsent == 0
    assert len(result.latencies_ms) == len(result.scheduled_ms) - result.unsent == result.ok
    from_send = percentile(result.latencies_ms, 99)
    from_schedule = percentile(result.scheduled_ms, 99)
    assert from_send is not None and from_send < 100
    assert from_schedule is not None and from_schedule > 300
    assert result.tool_latency_ms is not None


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
async def test_wrk_counts_the_slots_a_stall_kept_from_being_sent() -> None:
    """The service stalls from 1.2 s on, past the end of a 2-s run: the slots due from then on
    never find a connection and count with the time they waited."""
    async with EchoingService(1.2, 2.0) as service:
        url = f"http://127.0.0.1:{service.port}"
        target = Target((url,), "/events", "key", single_pool(64), 1, 2)
        result = await tools.wrk(target, 2, 1, 200)

    assert 100 < result.unsent < 200  # about 0.8 s of 200 slots a second
    assert len(result.scheduled_ms) == result.ok + result.unsent
    assert max(result.scheduled_ms) > 600
