"""Event ids: UUIDv7s (RFC 9562), so ids the service makes sort by time."""

from __future__ import annotations

import os
import time


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562) in its text form: 48-bit Unix milliseconds, version 7, random bits
    with the RFC variant, so ids sort by time."""
    return new_event_ids(1)[0]


_VARIANT = {f"{n:x}": f"{0x8 | (n & 0x3):x}" for n in range(16)}  # 10xx: the RFC variant


def new_event_ids(count: int) -> list[str]:
    """`count` UUIDv7s of this millisecond, built as text from one read of the system's random
    source (not a read per event: each read is a system call)."""
    millis = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex()
    prefix = f"{millis[:8]}-{millis[8:]}-7"
    rand = os.urandom(10 * count).hex()
    return [
        f"{prefix}{r[1:4]}-{_VARIANT[r[4]]}{r[5:8]}-{r[8:20]}"
        for r in (rand[i : i + 20] for i in range(0, 20 * count, 20))
    ]
