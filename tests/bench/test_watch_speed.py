"""The watch's micro-benchmark in its short mode (loadtests/watch_speed.py --short) runs to the end
and prints its figures; it asserts nothing about speed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 180  # a few seconds on a quiet 2-core machine


def test_short_watch_benchmark_prints_the_cost_per_event(server_url: str) -> None:
    command = [sys.executable, "-m", "loadtests.watch_speed", "--short"]
    done = subprocess.run(
        [*command, "--database-url", server_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    median = re.search(
        r"median of 1: 5,000 events: detector process ([\d.]+) us/event, PostgreSQL backend "
        r"(?:[\d.]+|n/a) us/event, together ([\d.]+) us/event",
        done.stdout,
    )
    assert median is not None, done.stdout
    assert float(median.group(2)) > 0
    assert re.search(r"alerts: .*break_glass \d+", done.stdout), done.stdout
