"""External load generators in C: wrk (closed loop at saturation; or paced: requests sent on an
even schedule, open loop while a connection is free) and h2load (`--rps`: constant rate per
client). One instance per API process; results come back as LoadResult."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from loadtests.bench.database import command_status
from loadtests.bench.driver import LoadResult, Target
from loadtests.bench.payloads import SINGLE_HEAD, SINGLE_TIME, BodyPool, fixed_body

# GET /healthz (the generator's ceiling): one static request, wrk's own figures.
WRK_GET_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "behind_ms": 0, "unsent": 0, "from_send_us": {}, "from_due_us": {}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""
# Single events from the pool, paced or not (the script says how it measures).
WRK_EVENTS = Path(__file__).with_name("wrk_events.lua")

H2LOAD_CLIENT_RPS = 20
H2LOAD_MAX_CLIENTS = 256
Latency = dict[str, float | None]  # p50, p95, p99, max in ms


def available(tool: str) -> bool:
    return shutil.which(tool) is not None


def wrk_script(
    target: Target, pool_file: Path, seconds: int, interval_ms: float | None = None
) -> str:
    """GET: the request and its report. POST: wrk_events.lua, taking its bodies from
    `pool_file` (write_pool), paced to one request each `interval_ms` per thread when given."""
    if target.bodies is None:
        head = f'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer {target.key}"\n'
        return head + WRK_GET_DONE
    names = {
        "__INTERVAL_MS__": "nil" if interval_ms is None else f"{interval_ms:.6f}",
        "__DURATION_MS__": str(seconds * 1000),
        "__EVENT_HEAD__": SINGLE_HEAD.decode(),
        "__TIME_HEAD__": SINGLE_TIME.decode(),
        "__POOL_FILE__": str(pool_file),
        "__PATH__": target.path,
        "__KEY__": target.key,
    }
    script = WRK_EVENTS.read_text()
    for name, value in names.items():
        script = script.replace(name, value)
    return script


def write_pool(pool: BodyPool, path: Path) -> None:
    """One line per single-event body: its age, a tab, and what follows its time."""
    lines = []
    for template in pool.templates:
        if template.parts[:3] != (SINGLE_HEAD, b"", SINGLE_TIME) or len(template.parts) != 5:
            raise ValueError("wrk sends single-event bodies only (payloads.single_template)")
        lines.append(b"%d\t%s\n" % (template.ages[0], template.parts[4]))
    path.write_bytes(b"".join(lines))


@contextlib.asynccontextmanager
async def scratch_dir() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as name:
        yield Path(name)


async def _output(*command: str, within_s: float) -> str:
    code, out, err = await command_status(list(command), within_s)
    if code != 0:
        raise RuntimeError(f"{command[0]} exited {code}: {err[-1000:]}")
    return out


async def wrk(
    target: Target, seconds: float, threads: int, rate: float | None = None
) -> LoadResult:
    """`target.connections` connections per API process for `seconds`: as fast as they go
    (rate None: saturation), or `rate` requests/s in all, paced. The latencies are the script's
    (each request timed from its send, and paced from its slot, wrk_events.lua) over every
    instance; wrk's own percentiles, of the slowest instance, are kept as tool_latency_ms."""
    duration = max(1, round(seconds))
    async with scratch_dir() as folder:
        script = folder / "bench.lua"
        interval_ms = None if rate is None else 1000 * len(target.urls) * threads / rate
        if target.bodies is not None:
            write_pool(target.bodies, folder / "pool.txt")
        script.write_text(wrk_script(target, folder / "pool.txt", duration, interval_ms))
        connections = max(threads, target.connections)
        outputs = await asyncio.gather(
            *(
                _output(
                    "wrk",
                    f"-t{threads}",
                    f"-c{connections}",
                    f"-d{duration}s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(script),
                    url + target.path,
                    within_s=seconds + 60,
                )
                for url in target.urls
            )
        )
    result = LoadResult(seconds=seconds, connections=connections * len(target.urls))
    result.cut_off = result.connections
    worst: dict[str, float] = {}
    for output in outputs:
        line = next(x for x in reversed(output.splitlines()) if x.startswith("{"))
        report = json.loads(line)
        _add_wrk_report(report, result)
        for name in ("p50", "p95", "p99", "max"):
            worst[name] = max(worst.get(name, 0.0), report[f"{name}_us"] / 1000)
    result.accepted_events = result.ok * target.events_per_request
    result.tool_latency_ms = {k: round(v, 2) for k, v in worst.items()}
    return result


def _add_wrk_report(report: dict[str, Any], result: LoadResult) -> None:
    result.max_behind_ms = max(result.max_behind_ms, report["behind_ms"])
    errors = {k: int(report[k]) for k in ("non2xx", "connect", "read", "write", "timeout")}
    result.sent += int(report["requests"])
    result.ok += int(report["requests"]) - errors["non2xx"]
    for reason, count in errors.items():
        if count:
            result.failed[reason] = result.failed.get(reason, 0) + count
    result.seconds = max(result.seconds, int(report["duration_us"]) / 1e6)
    result.unsent += int(report["unsent"])
    result.latencies_ms += expand(report["from_send_us"])
    result.scheduled_ms += expand(report["from_due_us"])


def expand(histogram: dict[str, int]) -> list[float]:
    """The latencies (ms) of a histogram {microseconds: count} from the wrk script."""
    return [int(us) / 1000 for us, count in histogram.items() for _ in range(count)]


def h2load_clients(target: Target, rate: float | None) -> int:
    """Clients per API process. Over HTTP/1.1 each client has one request in flight, so a
    client due again before its last answer came would hold the next one back: enough clients
    that each sends at most H2LOAD_CLIENT_RPS requests/s."""
    if rate is None:
        return target.connections
    wanted = math.ceil(rate / len(target.urls) / H2LOAD_CLIENT_RPS)
    return max(target.connections, min(H2LOAD_MAX_CLIENTS, wanted))


async def h2load(target: Target, rate: float | None, seconds: float) -> LoadResult:
    """`rate` requests/s in all (each client at its share: open loop), or as fast as they can
    with None (closed loop). Per-request times come from h2load's log file."""
    clients = h2load_clients(target, rate)
    result = LoadResult(seconds=seconds, connections=clients * len(target.urls))
    result.cut_off = result.connections
    async with scratch_dir() as folder:
        commands = []
        for i, url in enumerate(target.urls):
            command = ["h2load", "--h1", f"-c{clients}", f"-D{max(1, round(seconds))}"]
            command += ["-H", f"Authorization: Bearer {target.key}", f"--log-file={folder}/{i}.log"]
            if rate is not None:
                command.append(f"--rps={rate / len(target.urls) / clients:.3f}")
            if target.bodies is not None:  # h2load sends one body: one without id and time
                (folder / "body.json").write_bytes(fixed_body())
                command += ["-H", "Content-Type: application/json", "-d", str(folder / "body.json")]
            commands.append([*command, url + target.path])
        await asyncio.gather(*(_output(*c, within_s=seconds + 60) for c in commands))
        for i in range(len(target.urls)):
            _read_h2load_log(folder / f"{i}.log", result)
    result.accepted_events = result.ok * target.events_per_request
    return result


def _read_h2load_log(path: Path, result: LoadResult) -> None:
    """Tab-separated: start (us since the epoch), status, microseconds to the end of the answer."""
    for line in path.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        result.sent += 1
        if 200 <= int(status) < 300:
            result.ok += 1
            result.latencies_ms.append(int(micros) / 1000)
        else:
            result.fail(status)
