"""bench-results.json (everything, every run, the timeline) and a Markdown summary: medians of
the runs beside each run's figure."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from loadtests.bench.markdown import fmt as _fmt
from loadtests.bench.markdown import table as _table
from loadtests.bench.report_latency import latency_rows
from loadtests.bench.run import BenchResult, RunResult
from loadtests.bench.sampler import Window
from loadtests.bench.single import LOWER_SHARES
from loadtests.bench.soak import Soak, SoakRow
from loadtests.bench.stats import median

Getter = Callable[[RunResult], float | None]


def _hold(r: RunResult) -> Any:
    return r.bulk.hold


def _eighty(r: RunResult) -> Any:
    return r.bulk.eighty


def _lower_rows(index: int, share: float) -> list[tuple[str, Getter]]:
    """The rows of the paced single-event phase at LOWER_SHARES[index] of saturation."""
    label = f"single POST, {share:.0%}"
    return [
        (f"{label}: offered requests/s", lambda r: r.single_lower[index].offered_per_s),
        (f"{label}: latency p50 ms", lambda r: r.single_lower[index].latency_ms["p50"]),
        (f"{label}: latency p99 ms", lambda r: r.single_lower[index].latency_ms["p99"]),
    ]


# (label, how to read it from a run); one table row each.
HEADLINES: list[tuple[str, Getter]] = [
    ("bulk: highest rate that holds (events/s offered)", lambda r: r.bulk.best_rate),
    ("bulk hold: accepted events/s", lambda r: _hold(r).accepted_per_s),
    ("bulk hold: persisted events/s", lambda r: _hold(r).service.persisted_per_s),
    ("bulk hold: request latency p50 ms", lambda r: _hold(r).latency_ms["p50"]),
    ("bulk hold: request latency p95 ms", lambda r: _hold(r).latency_ms["p95"]),
    ("bulk hold: request latency p99 ms", lambda r: _hold(r).latency_ms["p99"]),
    ("bulk hold: ingest-to-persist p50 ms", lambda r: _hold(r).service.lag_p50_ms),
    ("bulk hold: ingest-to-persist p99 ms", lambda r: _hold(r).service.lag_p99_ms),
    ("bulk hold: queue depth max (events)", lambda r: _hold(r).service.queue_depth_max),
    ("bulk hold: driver's latest send, ms behind", lambda r: _hold(r).max_behind_ms),
    ("bulk at 80% of the hold: accepted events/s", lambda r: _eighty(r).accepted_per_s),
    ("bulk at 80%: request latency p50 ms", lambda r: _eighty(r).latency_ms["p50"]),
    ("bulk at 80%: request latency p99 ms", lambda r: _eighty(r).latency_ms["p99"]),
    ("bulk at 80%: ingest-to-persist p99 ms", lambda r: _eighty(r).service.lag_p99_ms),
    ("single POST, saturation: requests/s", lambda r: r.single_saturation.requests_per_s),
    ("single POST, saturation: latency p50 ms", lambda r: r.single_saturation.latency_ms["p50"]),
    ("single POST, saturation: latency p99 ms", lambda r: r.single_saturation.latency_ms["p99"]),
    ("single POST, 80%: offered requests/s", lambda r: r.single_80.offered_per_s),
    ("single POST, 80%: answered requests/s", lambda r: r.single_80.requests_per_s),
    ("single POST, 80%: latency p50 ms", lambda r: r.single_80.latency_ms["p50"]),
    ("single POST, 80%: latency p99 ms", lambda r: r.single_80.latency_ms["p99"]),
    ("single POST, 80%: generator's latest send, ms behind", lambda r: r.single_80.max_behind_ms),
    *(row for i, share in enumerate(LOWER_SHARES) for row in _lower_rows(i, share)),
    ("steady: accepted events/s", lambda r: r.steady.accepted_per_s),
    ("steady: persisted events/s", lambda r: r.steady.service.persisted_per_s),
    ("steady: request latency p50 ms", lambda r: r.steady.latency_ms["p50"]),
    ("steady: request latency p99 ms", lambda r: r.steady.latency_ms["p99"]),
    ("steady: ingest-to-persist p50 ms", lambda r: r.steady.service.lag_p50_ms),
    ("steady: ingest-to-persist p99 ms", lambda r: r.steady.service.lag_p99_ms),
    ("steady: queue depth max (events)", lambda r: r.steady.service.queue_depth_max),
    ("steady: driver's latest send, ms behind", lambda r: r.steady.max_behind_ms),
]


def medians(runs: list[RunResult]) -> dict[str, float | None]:
    return {label: median(get(r) for r in runs) for label, get in HEADLINES}


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError


def write_json(result: BenchResult, path: Path) -> None:
    data = dataclasses.asdict(result)
    data["medians"] = medians(result.runs)
    data["accounting"]["ok"] = result.accounting.ok
    path.write_bytes(orjson.dumps(data, default=_default, option=orjson.OPT_INDENT_2))


def _service_rows(result: BenchResult) -> list[str]:
    runs = result.runs
    head = ["measure", "median", *(f"run {r.run}" for r in runs)]
    middle = medians(runs)
    rows = [[label, _fmt(middle[label]), *(_fmt(get(r)) for r in runs)] for label, get in HEADLINES]
    first = runs[0]
    tools = (
        f"Generators: bulk and steady phases open loop in Python (asyncio streams); single POST "
        f"saturation {first.single_saturation.generator}, 80% {first.single_80.generator}"
        f"{' (paced to an even schedule)' if first.single_80.generator == 'wrk' else ''}"
        f"{' (one body again and again)' if first.single_80.generator == 'h2load' else ''}."
    )
    return [*_table(head, rows), "", tools, "", _verdicts(result)]


def _process_rows(result: BenchResult) -> list[str]:
    last = result.runs[-1]
    if last.bulk.hold is None:
        return []
    windows = {
        "bulk hold": last.bulk.hold.service,
        "single saturation": last.single_saturation.service,
        "steady": last.steady.service,
    }
    names = sorted({name for w in windows.values() for name in w.cpu_percent})
    hold = windows["bulk hold"]
    per_event = cpu_us_per_event(hold)
    rows = [
        [
            name,
            *(_fmt(w.cpu_percent.get(name)) for w in windows.values()),
            _fmt(per_event.get(name)),
            _fmt(hold.rss_mb_max.get(name)),
        ]
        for name in names
    ]
    head = [
        "process",
        *(f"CPU % {phase}" for phase in windows),
        "CPU us an event, hold",
        "RSS MB max, hold",
    ]
    lines = [
        f"### Processes in run {last.run} (CPU: 100 = one core busy)",
        "",
        *_table(head, rows),
    ]
    cpus = result.machine.get("cpus")
    if per_event and isinstance(cpus, int):
        total = sum(per_event.values())
        lines += [
            "",
            f"At the bulk hold these processes spent {total:,.0f} us of CPU per persisted event "
            f"(the service's processes, its PostgreSQL backends, Redis and the generator; not "
            f"PostgreSQL's WAL writer and checkpointer): on {cpus} cores that is a ceiling of "
            f"{cpus * 1e6 / total:,.0f} events/s for this layout.",
        ]
    return lines


def cpu_us_per_event(window: Window) -> dict[str, float]:
    """CPU microseconds per persisted event of each process group in the window."""
    if window.persisted_per_s <= 0:
        return {}
    return {
        name: round(percent / 100 * 1e6 / window.persisted_per_s, 1)
        for name, percent in window.cpu_percent.items()
    }


def _clock(seconds: float, window_s: float = 60.0) -> str:
    if window_s < 1:  # --smoke
        return f"{seconds:.1f} s"
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _each(values: dict[str, float] | dict[str, int]) -> str:
    def show(value: float) -> str:
        return _count(value) if isinstance(value, int) else _fmt(value)

    return " / ".join(f"{name} {show(values[name])}" for name in sorted(values))


def _soak_cells(r: SoakRow, window_s: float) -> list[str]:
    return [
        _clock(r.start_s, window_s),
        _fmt(r.accepted_per_s),
        _fmt(r.persisted_per_s),
        _count(r.queue_depth_max),
        _fmt(r.latency_p99_ms),
        _fmt(r.lag_p99_ms),
        _each(r.rss_mb),
        _each(r.sockets),
        _count(r.pg_backends),
        _count(r.redis_clients),
    ]


def _trend_cells(soak: Soak) -> list[str]:
    """The last row: each column's trend, per process where the column has one per process."""
    t = soak.trend
    if not soak.compared:
        return [f"trend: too few windows after {_clock(soak.warmup_s, soak.window_s)}", *[""] * 9]

    def each(prefix: str) -> str:
        names = sorted(k.removeprefix(prefix) for k in t if k.startswith(prefix))
        return " / ".join(f"{name} {t[prefix + name]}" for name in names) or "-"

    since = _clock(soak.warmup_s, soak.window_s)
    label = f"trend: last {soak.compared} vs first {soak.compared} from {since}"
    return [
        f"**{label}**",
        "",
        "",
        *(t.get(name, "-") for name in ("queue depth", "request p99 ms", "lag p99 ms")),
        each("RSS MB "),
        each("sockets "),
        t.get("PG backends", "-"),
        t.get("Redis clients", "-"),
    ]


def _soak_rows(result: BenchResult) -> list[str]:
    last = result.runs[-1]
    soak = last.steady.soak
    if soak is None or not soak.rows:
        return []
    head = [
        "time",
        "accepted/s",
        "persisted/s",
        "queue depth max",
        "request p99 ms",
        "lag p99 ms",
        "RSS MB max",
        "sockets max",
        "PG backends",
        "Redis clients",
    ]
    rows = [_soak_cells(r, soak.window_s) for r in soak.rows] + [_trend_cells(soak)]
    return [
        f"### Steady phase of run {last.run}, every {soak.window_s:g} s",
        "",
        *_table(head, rows),
        "",
        "Each window's most for queue depth, memory and connections; sockets open per process "
        "(/proc/PID/fd); backends connected to the bench database, and clients of the whole "
        "Redis server, the probe's own not counted. The trend compares means (flat: within "
        "what the bench tolerates as noise).",
        "",
    ]


def _verdicts(result: BenchResult) -> str:
    parts = []
    for r in result.runs:
        hold = r.bulk.hold
        held = f"hold at {_fmt(hold.offered_events_per_s)}/s {hold.verdict}" if hold else "no hold"
        for failed in reversed(r.bulk.failed_holds):
            held = f"hold at {_fmt(failed.offered_events_per_s)}/s {failed.verdict}, {held}"
        steps = ", ".join(f"{_fmt(s.offered_events_per_s)}: {s.verdict}" for s in r.bulk.steps)
        parts.append(f"run {r.run}: ramp ({steps}); {held}; steady {r.steady.verdict}")
    return "Verdicts (a rate holds when no request fails and the backlog does not grow): " + (
        "; ".join(parts)
    )


def _data_line(data: dict[str, dict[str, float]]) -> str:
    """What the bodies hold (loadtests.bench.population), pool by pool."""
    parts = [
        f"{name} {_count(int(d['events']))} events in {_count(int(d['bodies']))} bodies "
        f"({_count(int(d['patients']))} patients, {_count(int(d['principals']))} principals, "
        f"the 1,000 hottest patients in {d['hottest_1pct_share']:.0%} of the events about one)"
        for name, d in data.items()
    ]
    return "Request bodies, prepared ahead and sent in turn: " + "; ".join(parts) + "."


def markdown(result: BenchResult) -> str:
    o, a, v = result.options, result.accounting, result.verification
    m = result.machine
    lines = [
        f"## Write-side benchmark, {result.started_at} ({result.elapsed_s:,.0f} s)",
        "",
        f"{m['cpus']} CPUs, Python {m['python']}, PostgreSQL {m['postgresql']} ("
        + ", ".join(f"{k} {v}" for k, v in m["postgresql_settings"].items())
        + f"), Redis {m['redis']}. Service: {o['api_processes']} API process(es), "
        f"{o['worker_processes']} worker process(es) x {o['writers']} writers, batches of "
        f"{o['batch_size']} / {o['batch_wait_ms']} ms, the watch "
        f"{'on' if o['watch'] else 'off'}; bulk requests of {o['bulk']} events.",
        "",
        _data_line(result.data),
        "",
        "### Storage limit (record_row + seal_batch into a scratch database; no HTTP, no Redis)",
        "",
        *_table(
            [
                "writer connections",
                "sealed rows/s (rows built before)",
                "database CPU us a row",
                "writer path rows/s",
                "writer CPU us a row",
            ],
            [
                [
                    str(s.connections),
                    _fmt(s.sealed_rows_per_s),
                    _fmt(s.database_us_per_row),
                    _fmt(s.writer_rows_per_s),
                    _fmt(s.writer_us_per_row),
                ]
                for s in result.storage
            ],
        ),
        "",
        f"### Through the service (median of {len(result.runs)} run(s), then each run)",
        "",
        *_service_rows(result),
        "",
        *latency_rows(result),
        "",
        *_process_rows(result),
        "",
        *_soak_rows(result),
        "### Load generators alone, on GET /healthz",
        "",
        *_table(
            ["generator", "used for", "connections", "requests/s"],
            [
                [c.generator, c.used_for, str(c.connections), _fmt(c.requests_per_s)]
                for c in result.ceilings
            ],
        ),
        "",
        "### Accounting and verification",
        "",
        f"- accepted {a.accepted_total:,} (service), seen accepted by the clients "
        f"{a.client_accepted:,} (+{a.client_unknown:,} unanswered), persisted "
        f"{a.persisted_total:,}, rows {a.rows:,}, sealed by {a.ledger_entries:,} ledger entries "
        f"{a.sealed_rows:,}: **{'OK' if a.ok else 'FAILED: ' + '; '.join(a.problems)}**",
        f"- `python -m app verify`: **{'intact' if v.intact else 'NOT intact'}** "
        f"({v.summary.get('events', '?')} events, "
        f"{v.summary.get('ledger_entries', '?')} ledger entries, {v.seconds} s)",
        "",
    ]
    return "\n".join(lines)
