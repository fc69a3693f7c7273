"""HTTP load in Python: an open-loop (rate-controlled) driver and a closed-loop one, on plain
asyncio streams (loadtests.bench.http1), optionally spread over processes. Bodies come from a
pool prepared ahead and are completed as they are sent (loadtests.bench.payloads).

Open loop: request i is due at start + i / rate whatever happened to earlier ones, so a slow
service cannot slow the offered load down. A request due while every connection is busy waits
for the first to come free (counted in `waited`: the service is not keeping up) and one still
waiting when the schedule ends is not sent (`unsent`). Each answered request has two latencies:
from its send (`latencies_ms`) and from when it was due (`scheduled_ms`). The second is corrected
for coordinated omission: while the service stalls, the requests due behind the stall are sent
late, and timing them from their send alone would leave the stall out; an unsent request counts
in it with the time it had waited when the schedule ended (a lower bound).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import multiprocessing
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

from loadtests.bench.http1 import Connection
from loadtests.bench.payloads import BodyPool, BodyWriter

REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Target:
    urls: tuple[str, ...]  # one base URL per API process, used in turn
    path: str
    key: str
    bodies: BodyPool | None = None  # None: GET
    events_per_request: int = 0
    connections: int = 16  # per URL

    @property
    def slots(self) -> int:
        return self.connections * len(self.urls)


@dataclass(slots=True)
class LoadResult:
    seconds: float = 0.0
    sent: int = 0
    ok: int = 0
    accepted_events: int = 0
    waited: int = 0  # due while every connection was busy: sent late (open loop)
    unsent: int = 0  # still waiting for a connection when the schedule ended (open loop)
    # Requests the generator may have left in flight when it stopped (wrk, h2load: one per
    # connection); the service may have accepted them.
    cut_off: int = 0
    connections: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    max_behind_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # from the send, answered 2xx
    # Open loop: from when each request was due, answered 2xx or never sent (module docstring).
    scheduled_ms: list[float] = field(default_factory=list)
    # When each latency's answer came (time.monotonic()); the Python generators only.
    answered_at: list[float] = field(default_factory=list)
    # The tool's own percentiles where it reports them (wrk), kept beside the bench's.
    tool_latency_ms: dict[str, float | None] | None = None

    @property
    def failures(self) -> int:
        return sum(self.failed.values()) + self.waited + self.unsent

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.accepted_events / self.seconds if self.seconds else 0.0

    def unanswered(self) -> int:
        """Requests whose answer never came (transport errors, time-outs, cut off at the end):
        the service may have accepted them."""
        answered = {"non2xx"}  # wrk's count of answers with another status
        lost = (
            n
            for reason, n in self.failed.items()
            if not reason.isdigit() and reason not in answered
        )
        return sum(lost) + self.cut_off

    def problem(self) -> str:
        """What went wrong, or "" when every request was sent and answered 2xx."""
        parts = [f"{n} x {reason}" for reason, n in sorted(self.failed.items())]
        busy = f"all {self.connections} connections busy"
        if self.waited:
            parts.append(f"{self.waited} sent late ({busy} when due)")
        if self.unsent:
            parts.append(f"{self.unsent} not sent by the end ({busy})")
        return ", ".join(parts)

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def merge(self, other: LoadResult) -> None:
        self.seconds = max(self.seconds, other.seconds)
        self.sent += other.sent
        self.ok += other.ok
        self.accepted_events += other.accepted_events
        self.waited += other.waited
        self.unsent += other.unsent
        self.cut_off += other.cut_off
        self.connections += other.connections
        for reason, count in other.failed.items():
            self.failed[reason] = self.failed.get(reason, 0) + count
        self.max_behind_ms = max(self.max_behind_ms, other.max_behind_ms)
        self.latencies_ms += other.latencies_ms
        self.scheduled_ms += other.scheduled_ms
        self.answered_at += other.answered_at


@contextlib.asynccontextmanager
async def clients(target: Target) -> AsyncIterator[list[Connection]]:
    """`target.connections` connections per URL, the URLs interleaved."""
    post = target.bodies is not None
    pool = [
        Connection(url, target.path, target.key, post)
        for _ in range(target.connections)
        for url in target.urls
    ]
    try:
        yield pool
    finally:
        for connection in pool:
            connection.close()


async def send(
    client: Connection, body: bytes | None, result: LoadResult, events: int, due: float | None
) -> None:
    """One request; `due` (time.perf_counter()) is when the schedule had it leave."""
    result.sent += 1
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            status = await client.exchange(body)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        result.fail(type(exc).__name__)
        return
    except TimeoutError:
        result.fail("timeout")
        return
    if status >= 300:
        result.fail(str(status))
        return
    answered = time.perf_counter()
    result.latencies_ms.append((answered - started) * 1000)
    if due is not None:
        result.scheduled_ms.append((answered - due) * 1000)
    result.answered_at.append(time.monotonic())
    result.ok += 1
    result.accepted_events += events


class Dispatcher:
    """Hands each due request to a free connection; requests due while every connection is
    busy wait in order, and the first connection to come free takes the oldest."""

    def __init__(self, target: Target, result: LoadResult, pool: list[Connection]) -> None:
        self.target = target
        self.result = result
        self.bodies: BodyWriter | None = target.bodies.writer() if target.bodies else None
        self.idle = collections.deque(pool)
        self.waiting: collections.deque[float] = collections.deque()  # their due times
        self.in_flight: set[asyncio.Task[None]] = set()

    def offer(self, due: float) -> None:
        if self.idle:
            self._launch(self.idle.popleft(), due)
            return
        self.result.waited += 1
        self.waiting.append(due)

    def give_up(self, now: float) -> None:
        """The schedule has ended: requests still waiting are not sent; each counts with the
        time it has waited."""
        self.result.scheduled_ms += [(now - due) * 1000 for due in self.waiting]
        self.result.unsent += len(self.waiting)
        self.waiting.clear()

    def body(self) -> bytes | None:
        return None if self.bodies is None else self.bodies.next_body()

    def _launch(self, client: Connection, due: float) -> None:
        events = self.target.events_per_request
        task = asyncio.create_task(send(client, self.body(), self.result, events, due))
        self.in_flight.add(task)
        task.add_done_callback(functools.partial(self._release, client))

    def _release(self, client: Connection, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if self.waiting:
            self._launch(client, self.waiting.popleft())
        else:
            self.idle.append(client)


async def open_loop(target: Target, rate: float, seconds: float) -> LoadResult:
    """Offer `rate` requests/s for `seconds`, then wait for the answers still due."""
    result = LoadResult(seconds=seconds, connections=target.slots)
    async with clients(target) as pool:
        dispatcher = Dispatcher(target, result, pool)
        start = time.perf_counter()
        for index in range(max(1, round(rate * seconds))):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                result.max_behind_ms = max(result.max_behind_ms, -delay * 1000)
            dispatcher.offer(due)
        await asyncio.sleep(max(0.0, start + seconds - time.perf_counter()))
        dispatcher.give_up(time.perf_counter())
        await _finish(dispatcher.in_flight, result)
    return result


async def closed_loop(target: Target, seconds: float) -> LoadResult:
    """Every connection sends its next request as soon as the last one is answered."""
    result = LoadResult(seconds=seconds, connections=target.slots)
    async with clients(target) as pool:
        dispatcher = Dispatcher(target, result, pool)
        until = time.perf_counter() + seconds

        async def loop(client: Connection) -> None:
            while time.perf_counter() < until:
                body = dispatcher.body()
                await send(client, body, result, target.events_per_request, None)

        await asyncio.gather(*(loop(client) for client in pool))
    return result


async def _finish(in_flight: set[asyncio.Task[None]], result: LoadResult) -> None:
    if not in_flight:
        return
    _, late = await asyncio.wait(set(in_flight), timeout=REQUEST_TIMEOUT_S)
    for task in late:
        task.cancel()
        result.fail("unanswered")


@dataclass(frozen=True, slots=True)
class Job:
    target: Target
    seconds: float
    rate: float | None = None  # requests/s: open loop; None: closed loop
    start_at: float = 0.0  # time.time() at which every process begins


def run_job(job: Job) -> LoadResult:
    """One process's share (the entry point of each worker process)."""

    async def main() -> LoadResult:
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
        if job.rate is None:
            return await closed_loop(job.target, job.seconds)
        return await open_loop(job.target, job.rate, job.seconds)

    return asyncio.run(main())


async def in_processes(job: Job, processes: int) -> LoadResult:
    """Split the job (rate and connections) over `processes` processes; 1 runs it here."""
    if processes <= 1:
        if job.rate is None:
            return await closed_loop(job.target, job.seconds)
        return await open_loop(job.target, job.rate, job.seconds)
    share = replace(
        job,
        target=replace(job.target, connections=max(1, job.target.connections // processes)),
        rate=None if job.rate is None else job.rate / processes,
        start_at=time.time() + 2.0,  # time for every process to start and import
    )
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        parts = await asyncio.gather(
            *(loop.run_in_executor(pool, run_job, share) for _ in range(processes))
        )
    total = LoadResult()
    for part in parts:
        total.merge(part)
    return total
