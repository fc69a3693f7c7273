"""The benchmark's smoke run (`make bench-smoke`) as part of the suite: the whole write-side
benchmark in seconds, on the same PostgreSQL and Redis as the other tests. It checks that every
event the load generators had accepted was stored exactly once and sealed, and that the ledger
verifies; it says nothing about speed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from loadtests.bench import bulk as bulk_module
from loadtests.bench.bulk import BulkPhase
from loadtests.bench.context import Context
from loadtests.bench.http1 import parse_head, request_bytes, request_head
from loadtests.bench.sampler import Window

ROOT = Path(__file__).resolve().parents[2]
SMOKE_LIMIT_S = 240  # seconds; it takes about 20 on a quiet 2-core machine


def run_smoke(server_url: str, redis_url: str, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "loadtests.bench", "--smoke", "--out-dir", str(out)]
    command += ["--database-url", server_url, "--redis-url", redis_url]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=SMOKE_LIMIT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the benchmark stop its service and drop its databases.
        os.kill(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        raise AssertionError(
            f"bench smoke still running after {SMOKE_LIMIT_S} s:\n{output}"
        ) from None
    return subprocess.CompletedProcess(command, proc.returncode, output)


def test_bench_smoke_accounts_for_every_event(
    server_url: str, redis_url: str, tmp_path: Path
) -> None:
    done = run_smoke(server_url, redis_url, tmp_path)

    assert done.returncode == 0, done.stdout[-5000:]
    results = json.loads((tmp_path / "bench-results.json").read_text())
    accounting = results["accounting"]
    assert accounting["ok"], accounting["problems"]
    assert accounting["drained"]
    assert accounting["accepted_total"] > 0
    # The Python generators see every answer: their count is exact, not a bound.
    assert accounting["client_unknown"] == 0
    # The watch runs as deployed: its alerts (the population breaks the glass now and then)
    # are events the service accepted of its own, recorded before the accounting.
    assert accounting["alert_events"] > 0
    assert (
        accounting["client_accepted"] == accounting["accepted_total"] - accounting["alert_events"]
    )
    assert accounting["rows"] == accounting["accepted_total"] == accounting["persisted_total"]
    assert accounting["sealed_rows"] == accounting["rows"]
    assert accounting["dead_lettered_events"] == 0
    assert results["verification"]["intact"]
    assert results["verification"]["summary"]["events"] == accounting["rows"]
    assert "Accounting and verification" in (tmp_path / "bench-results.md").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        charts = {p.name for p in (tmp_path / "bench-charts").iterdir()}
        assert charts == {"throughput.png", "backlog.png", "lag.png"}
    storage = results["storage"]
    assert all(s["writer_us_per_row"] > 0 for s in storage)
    assert all(s["database_us_per_row"] is None or s["database_us_per_row"] > 0 for s in storage)


def test_the_generator_reads_answers_by_their_head() -> None:
    assert parse_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 52\r\n\r\n") == (202, 52, False)
    assert parse_head(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") == (
        503,
        0,
        True,
    )
    for head in (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ndate: x\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
    ):
        with pytest.raises(ConnectionError):
            parse_head(head)


def test_the_generator_prepares_the_head_once_and_adds_each_body() -> None:
    head = request_head("127.0.0.1:8000", "/events", "aik_x", post=True)
    assert request_bytes(head, b'{"a":1}') == (
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer aik_x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n"
        b'{"a":1}'
    )
    get = request_head("127.0.0.1:8000", "/healthz", "aik_x", post=False)
    assert request_bytes(get, None) == (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer aik_x\r\n\r\n"
    )


async def test_a_hold_that_fails_is_tried_a_step_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ramp's last good step may hold for seconds and not for the whole hold: the bench
    then holds a step lower, and keeps the failed hold's events in its accounting."""
    driven: list[tuple[str, float]] = []

    async def drive(ctx: object, phase: str, rate: float, bulk: int, seconds: float) -> BulkPhase:
        driven.append((phase, rate))
        holds = rate <= (12_500 if "hold" in phase else 15_000)
        window = Window(seconds, rate, rate, None, None, 0, {}, {})
        verdict = "holds" if holds else "backlog grows"
        latency: dict[str, float | None] = {"p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0}
        return BulkPhase(
            phase, rate, bulk, 1, 1.0, 0, {}, 0, 0, latency, latency, 0, 0, holds, verdict, window
        )

    async def drain(within_s: float) -> None:
        return None

    options = SimpleNamespace(
        ramp_start=10_000,
        ramp_step=2_500,
        ramp_max_steps=10,
        bulk=100,
        step_seconds=1,
        hold=5,
        drain_timeout=1,
    )
    monkeypatch.setattr(bulk_module, "drive_bulk", drive)
    ctx = cast(Context, SimpleNamespace(options=options, drain=drain))
    out = await bulk_module.ramp_and_hold(ctx, 1)

    assert [rate for _, rate in driven] == [10_000, 12_500, 15_000, 17_500, 15_000, 12_500, 10_000]
    assert out.best_rate == 12_500
    assert [h.offered_events_per_s for h in out.failed_holds] == [15_000]
    assert out.hold is not None and out.hold.holds and out.hold.offered_events_per_s == 12_500
    assert out.eighty is not None and out.eighty.offered_events_per_s == 10_000
    assert len(out.phases()) == len(driven)
