"""Command-line options; `--smoke` swaps in a seconds-long configuration that checks the
machinery (accounting, verification), not speed."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from loadtests.bench.service import Layout

DEFAULT_DATABASE = "postgresql://root@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
SMOKE = {
    "runs": 1,
    "batch_size": 1000,
    "storage_batches": 2,
    "bulk": 100,
    "pool_events": 4096,
    "connections": 8,
    "ramp_start": 500,
    "ramp_step": 500,
    "ramp_max_steps": 2,
    "step_seconds": 1.5,
    "hold": 2.0,
    "ceiling_seconds": 1.0,
    "single_seconds": 1.5,
    "single_connections": 4,
    "single_tool": "python",
    "open_loop_tool": "python",
    "python_processes": 1,
    "steady": 2.0,
    "steady_rate": 1000.0,
    "steady_bulk": 100,
    "drain_timeout": 60.0,
    "sample_interval": 0.25,
    "soak_window": 0.5,
    "soak_warmup": 0.5,
    "verify_jobs": 1,
}


@dataclass(frozen=True, slots=True)
class Options:
    database_url: str
    redis_url: str
    out_dir: Path
    smoke: bool
    runs: int
    api_processes: int
    worker_processes: int
    writers: int
    batch_size: int
    batch_wait_ms: int
    watch: bool
    storage_batches: int
    bulk: int
    pool_events: int
    connections: int
    ramp_start: float
    ramp_step: float
    ramp_max_steps: int
    step_seconds: float
    hold: float
    ceiling_seconds: float
    single_seconds: float
    single_connections: int
    single_tool: str
    open_loop_tool: str
    wrk_threads: int
    python_processes: int
    steady: float
    steady_rate: float
    steady_bulk: int
    drain_timeout: float
    sample_interval: float
    soak_window: float
    soak_warmup: float
    verify_jobs: int
    charts: bool

    @property
    def layout(self) -> Layout:
        return Layout(
            self.api_processes,
            self.worker_processes,
            self.writers,
            self.batch_size,
            self.batch_wait_ms,
            self.watch,
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    add = p.add_argument
    add(
        "--database-url",
        default=os.environ.get("AUDIT_BENCH_DATABASE_URL", DEFAULT_DATABASE),
        help="a database on the server to use; scratch databases are created beside it",
    )
    add("--redis-url", default=os.environ.get("AUDIT_BENCH_REDIS_URL", DEFAULT_REDIS))
    add(
        "--out-dir",
        type=Path,
        default=Path("."),
        help="where bench-results.json, bench-results.md and bench-charts/ go",
    )
    add("--smoke", action="store_true", help="a seconds-long run: accounting, not speed")
    add("--runs", type=int, default=3, help="repeat the service measurements; medians")
    add("--api-processes", type=int, default=2, help="serve processes, each on its own port")
    add("--worker-processes", type=int, default=1, help="0: writers run inside serve")
    add("--writers", type=int, default=2, help="writer tasks per writing process")
    add("--batch-size", type=int, default=Layout().batch_size, help="the service's default")
    add("--batch-wait-ms", type=int, default=Layout().batch_wait_ms, help="the service's default")
    add(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="the writers' processes without the watch (AUDIT_WATCH_ENABLED=false), to compare",
    )
    add("--storage-batches", type=int, default=10, help="batches per connection (storage)")
    add("--bulk", type=int, default=1000, help="events per bulk request")
    add(
        "--pool-events",
        type=int,
        default=131_072,
        help="bulk events prepared ahead and sent in turn; single events: half as many",
    )
    add("--connections", type=int, default=64, help="bulk driver connections per API process")
    add("--ramp-start", type=float, default=10_000, help="events/s of the first step")
    add("--ramp-step", type=float, default=2500, help="events/s added per step")
    add("--ramp-max-steps", type=int, default=24)
    add("--step-seconds", type=float, default=10.0)
    add("--hold", type=float, default=60.0, help="seconds at the highest good bulk rate")
    add("--ceiling-seconds", type=float, default=5.0, help="load generators on GET /healthz")
    add("--single-seconds", type=float, default=15.0)
    add("--single-connections", type=int, default=32)
    add("--single-tool", choices=("auto", "wrk", "python"), default="auto")
    add("--open-loop-tool", choices=("auto", "wrk", "h2load", "python"), default="auto")
    add("--wrk-threads", type=int, default=1)
    add("--python-processes", type=int, default=2, help="processes of the Python generators")
    add("--steady", type=float, default=60.0, help="seconds of the steady phase")
    add("--steady-rate", type=float, default=10_000, help="events/s of the steady phase")
    add("--steady-bulk", type=int, default=100, help="events per request, steady phase")
    add("--drain-timeout", type=float, default=300.0)
    add("--sample-interval", type=float, default=1.0)
    add("--soak-window", type=float, default=30.0, help="seconds per row of the steady table")
    add(
        "--soak-warmup",
        type=float,
        default=30.0,
        help="steady seconds before the windows the trend compares with the last ones",
    )
    add("--verify-jobs", type=int, default=0, help="`verify --jobs`; 0: its default")
    add("--no-charts", dest="charts", action="store_false")
    return p


def parse_options(argv: list[str] | None = None) -> Options:
    parser = build_parser()
    if "--smoke" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**SMOKE)  # explicit options still win
    args = parser.parse_args(argv)
    return Options(**{f.name: getattr(args, f.name) for f in fields(Options)})
