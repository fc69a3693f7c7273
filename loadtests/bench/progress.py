"""Progress lines on stdout, each with the seconds since the benchmark began."""

from __future__ import annotations

import time

_BEGAN = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _BEGAN:6.1f} s] {message}", flush=True)
