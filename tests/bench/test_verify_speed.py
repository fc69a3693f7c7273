"""The whole-log verification benchmark's short mode (loadtests/verify_speed.py --short) runs
to the end and prints its figure; it asserts nothing about speed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 180  # about 6 s on a quiet 2-core machine


def test_short_verify_benchmark_prints_events_per_core(server_url: str) -> None:
    command = [sys.executable, "-m", "loadtests.verify_speed", "--short"]
    done = subprocess.run(
        [*command, "--database-url", server_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    median = re.search(
        r"median of 1 .*: verify 5,000 events: CPU [\d.]+ s, ([\d,]+) events/s per CPU core, "
        r"wall [\d.]+ s",
        done.stdout,
    )
    assert median is not None, done.stdout
    assert int(median.group(1).replace(",", "")) > 0
