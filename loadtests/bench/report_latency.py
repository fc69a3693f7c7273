"""The report's table of open-loop latency: each phase timed from each request's send and from
when its schedule had it due (corrected for coordinated omission)."""

from __future__ import annotations

from loadtests.bench.markdown import fmt, table
from loadtests.bench.run import BenchResult, RunResult
from loadtests.bench.stats import median

# The open-loop phases, each with its generator and its two latency summaries (ms): from each
# request's send, and from when the schedule had it due.
Paced = tuple[str, dict[str, float | None], dict[str, float | None], int]


def open_loop_phases(r: RunResult) -> dict[str, Paced]:
    found: dict[str, Paced] = {}
    for name, bulk in (("bulk hold", r.bulk.hold), ("bulk at 80%", r.bulk.eighty)):
        if bulk is not None:
            found[name] = ("python", bulk.latency_ms, bulk.scheduled_latency_ms, bulk.unsent)
    for single in (r.single_80, *r.single_lower):
        label = f"single POST, {single.phase.rsplit(' ', 1)[-1]}"
        found[label] = (
            single.generator,
            single.latency_ms,
            single.scheduled_latency_ms,
            single.unsent,
        )
    s = r.steady
    found["steady"] = ("python", s.latency_ms, s.scheduled_latency_ms, s.unsent)
    return found


def latency_rows(result: BenchResult) -> list[str]:
    per_run = [open_loop_phases(r) for r in result.runs]
    shares = ("p50", "p95", "p99")
    rows = []
    for name, (tool, *_) in per_run[0].items():
        sent = [median(run[name][1][k] for run in per_run if name in run) for k in shares]
        due = [median(run[name][2][k] for run in per_run if name in run) for k in shares]
        unsent = median(run[name][3] for run in per_run if name in run)
        rows.append([name, tool, *map(fmt, sent), *map(fmt, due), f"{unsent or 0:,.0f}"])
    head = ["open-loop phase", "generator"]
    head += [f"{k} from send" for k in shares] + [f"{k} from schedule" for k in shares]
    return [
        f"### Open-loop latency, ms (median of {len(result.runs)} run(s); each run's in the JSON)",
        "",
        *table([*head, "never sent"], rows),
        "",
        "*From send*: from when the request was written to its whole answer (the figure the "
        "table above has). *From schedule*: from when the open-loop schedule had it due "
        "(request i at i / rate), so it counts the time a request waited for a free "
        "connection, and a request that never found one counts with the time it had waited at "
        "the end (*never sent*): corrected for coordinated omission. '-': the generator cannot "
        "tell (h2load). wrk's own percentiles, which add samples of their own to slow answers, "
        "are in the JSON (`tool_latency_ms`).",
    ]
