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

from loadtests.bench.database import command_status
from loadtests.bench.driver import LoadResult, Target

WRK_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "behind_ms": %.3f}\\n', summary.requests, summary.duration, e.status,
    e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, behind and behind() or 0))
end
"""


# Paced wrk: each thread sends its share of the rate on an even schedule (LuaJIT's FFI reads
# CLOCK_MONOTONIC); a connection that comes free takes the next slot. A slot already past when
# a connection comes free (every connection busy) is sent at once and counted in `behind_ms`,
# so a generator that could not keep the schedule shows it.
WRK_PACED = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local due = nil
behind_ms = 0
function delay()
  local now = now_ms()
  if due == nil then due = now end
  local wait = due - now
  due = due + INTERVAL_MS
  if wait < 0 then
    if -wait > behind_ms then behind_ms = -wait end
    return 0
  end
  return math.floor(wait + 0.5)
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function behind()
  local most = 0
  for _, t in ipairs(threads) do most = math.max(most, t:get("behind_ms")) end
  return most
end
"""

H2LOAD_CLIENT_RPS = 20
H2LOAD_MAX_CLIENTS = 256
Latency = dict[str, float | None]  # p50, p95, p99, max in ms


def available(tool: str) -> bool:
    return shutil.which(tool) is not None


def wrk_script(target: Target, interval_ms: float | None = None) -> str:
    """The request, its `done` report, and with `interval_ms` the pacing of each thread."""
    lines = [
        f'wrk.method = "{"GET" if target.body is None else "POST"}"',
        'wrk.headers["Authorization"] = "Bearer ' + target.key + '"',
    ]
    if target.body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = [==[{target.body.decode()}]==]")
    paced = "" if interval_ms is None else WRK_PACED.replace("INTERVAL_MS", f"{interval_ms:.6f}")
    return "\n".join(lines) + paced + WRK_DONE


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
) -> tuple[LoadResult, Latency]:
    """`target.connections` connections per API process for `seconds`: as fast as they go
    (rate None: saturation), or `rate` requests/s in all, paced. wrk keeps a histogram, not the
    samples: its percentiles, of the slowest instance when several run."""
    async with scratch_dir() as folder:
        script = folder / "bench.lua"
        interval_ms = None if rate is None else 1000 * len(target.urls) * threads / rate
        script.write_text(wrk_script(target, interval_ms))
        connections = max(threads, target.connections)
        outputs = await asyncio.gather(
            *(
                _output(
                    "wrk",
                    f"-t{threads}",
                    f"-c{connections}",
                    f"-d{max(1, round(seconds))}s",
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
        result.max_behind_ms = max(result.max_behind_ms, report["behind_ms"])
        errors = {k: int(report[k]) for k in ("non2xx", "connect", "read", "write", "timeout")}
        result.sent += int(report["requests"])
        result.ok += int(report["requests"]) - errors["non2xx"]
        for reason, count in errors.items():
            if count:
                result.failed[reason] = result.failed.get(reason, 0) + count
        result.seconds = max(result.seconds, int(report["duration_us"]) / 1e6)
        for name in ("p50", "p95", "p99", "max"):
            worst[name] = max(worst.get(name, 0.0), report[f"{name}_us"] / 1000)
    result.accepted_events = result.ok * target.events_per_request
    return result, {k: round(v, 2) for k, v in worst.items()}


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
            if target.body is not None:
                (folder / "body.json").write_bytes(target.body)
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
