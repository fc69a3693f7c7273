"""Per-caller bounds: slots for long-running work (exports, verifications) per API key, per
organization and per process, and token buckets for ingest rates. Each API process keeps its
own; a caller over a bound gets 429 with Retry-After, never a share of someone else's."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.core.errors import ApiError

MAX_BUCKETS = 100_000  # callers remembered per process; the least recently seen go first


class TooManyRequests(ApiError):
    status_code = 429
    code = "rate_limited"


class TooManyExports(TooManyRequests):
    code = "too_many_exports"


class TooManyVerifications(TooManyRequests):
    code = "too_many_verifications"


class QueueQuotaExceeded(TooManyRequests):
    code = "queue_quota_exceeded"


class TooManyLargeRequests(TooManyRequests):
    code = "too_many_large_requests"


@dataclass(frozen=True, slots=True)
class Slot:
    """A held slot; `release` gives it back (once, however often it is called)."""

    release: Callable[[], None]


class Slots:
    """At most `per_key` running at once for one key, `per_org` for one organization and
    `total` in all."""

    def __init__(self, what: str, total: int, per_key: int, per_org: int, retry_after_s: int = 5):
        self.what = what
        self.total, self.per_key, self.per_org = total, per_key, per_org
        self.retry_after_s = retry_after_s
        self.running = 0
        self._keys: dict[str, int] = {}
        self._orgs: dict[str, int] = {}

    def acquire(self, key_id: str, organization: str, error: type[TooManyRequests]) -> Slot:
        """A slot for this caller, or `error` (429) saying which bound it met."""
        if self._keys.get(key_id, 0) >= self.per_key:
            bound = f"{self.per_key} per API key"
        elif self._orgs.get(organization, 0) >= self.per_org:
            bound = f"{self.per_org} per organization"
        elif self.running >= self.total:
            bound = f"{self.total} at once on this server"
        else:
            return self._take(key_id, organization)
        raise error(
            f"too many {self.what} running: at most {bound}; retry later",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    def _take(self, key_id: str, organization: str) -> Slot:
        self.running += 1
        self._keys[key_id] = self._keys.get(key_id, 0) + 1
        self._orgs[organization] = self._orgs.get(organization, 0) + 1
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                self.running -= 1
                _decrement(self._keys, key_id)
                _decrement(self._orgs, organization)

        return Slot(release)


def _decrement(counts: dict[str, int], name: str) -> None:
    left = counts[name] - 1
    if left:
        counts[name] = left
    else:
        del counts[name]


class TokenBuckets:
    """A token bucket per name: `rate` tokens a second, up to `burst` saved up. Spending more
    than is there is refused with the seconds until enough is back (nothing is spent then)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def wait_for(self, name: str, tokens: float, now: float | None = None) -> float:
        """0 when `tokens` are there now; else the seconds until they would be. Spends
        nothing (see `spend`)."""
        if self.rate <= 0:
            return 0.0
        level = self._level(name, time.monotonic() if now is None else now)
        return 0.0 if tokens <= level else (tokens - level) / self.rate

    def spend(self, name: str, tokens: float, now: float | None = None) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        self._remember(name, self._level(name, now) - tokens, now)

    def _level(self, name: str, now: float) -> float:
        level, at = self._buckets.get(name, (self.burst, now))
        return min(self.burst, level + (now - at) * self.rate)

    def _remember(self, name: str, level: float, now: float) -> None:
        self._buckets[name] = (level, now)
        self._buckets.move_to_end(name)
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
