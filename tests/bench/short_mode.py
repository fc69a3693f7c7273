"""Running a micro-benchmark's short mode (`python -m loadtests.<name> --short`) as the suite
does: to the end, on the test server, its output for the test to read; no timed assert."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 180  # seconds on a quiet 2-core machine


def run_short(module: str, server_url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--short", "--database-url", server_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
