"""The watch's micro-benchmark in its short mode (loadtests/watch_speed.py --short) runs to the end
and prints its figures; it asserts nothing about speed."""

from __future__ import annotations

import re

from tests.bench.short_mode import run_short


def test_short_watch_benchmark_prints_the_cost_per_event(server_url: str) -> None:
    stdout = run_short("loadtests.watch_speed", server_url)
    median = re.search(
        r"median of 1: 5,000 events: detector process ([\d.]+) us/event, PostgreSQL backend "
        r"(?:[\d.]+|n/a) us/event, together ([\d.]+) us/event",
        stdout,
    )
    assert median is not None, stdout
    assert float(median.group(2)) > 0
    assert re.search(r"alerts: .*break_glass \d+", stdout), stdout
