"""The whole-log verification benchmark's short mode (loadtests/verify_speed.py --short) runs
to the end and prints its figure; it asserts nothing about speed."""

from __future__ import annotations

import re

from tests.bench.short_mode import run_short


def test_short_verify_benchmark_prints_events_per_core(server_url: str) -> None:
    stdout = run_short("loadtests.verify_speed", server_url)
    median = re.search(
        r"median of 1 .*: verify 5,000 events: CPU [\d.]+ s, ([\d,]+) events/s per CPU core, "
        r"wall [\d.]+ s",
        stdout,
    )
    assert median is not None, stdout
    assert int(median.group(1).replace(",", "")) > 0
