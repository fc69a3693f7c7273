"""The state of the rules that count over a sliding window, kept in memory, bounded, and the same
whether an access is added once or again (an examination retried after a failed commit, a
principal's recent past read back from audit_log on top of what was already examined)."""

from __future__ import annotations

import bisect
import uuid

Evidence = list[tuple[float, uuid.UUID]]  # (time, event id), oldest first


class DistinctPatients:
    """The distinct patients one principal accessed within `window` seconds of its newest access,
    each with its latest access. The count is exact up to `cap`; past it, it is only known to be
    past it (the rule only needs to know a count went over its limit): between cap and twice
    cap patients are held, the oldest let go in one sort when there are more. An access older
    than the window is ignored.

    A plain dict (an ordered one cost a microsecond more an access): entries older than the
    window are let go in one pass once the oldest can be, so each is looked at a bounded number
    of times."""

    __slots__ = ("cap", "expires", "latest", "median", "newest", "usual", "window")

    def __init__(self, window: float, cap: int) -> None:
        self.window = window
        self.cap = cap
        self.latest: dict[str, tuple[float, uuid.UUID]] = {}
        self.newest = float("-inf")
        # No entry is older than the window until the newest access passes this time (the
        # oldest entry's time plus the window, or earlier).
        self.expires = float("inf")
        # The principal's baseline, once read (app.watch.evaluate): its median (None: it has
        # none yet), and (the day's start, its end, the highest count usual that day).
        self.median: float | None = None
        self.usual = (0.0, 0.0, 0.0)

    def knows(self, at: float) -> bool:
        """Whether the baseline of the day `at` falls in is known."""
        return self.usual[0] <= at < self.usual[1]

    def add(self, at: float, patient: str, event_id: uuid.UUID) -> int:
        """Add one access; the count of distinct patients in the window after it."""
        if at > self.newest:
            self.newest = at
        latest = self.latest
        ends = at + self.window
        if ends >= self.newest:
            seen = latest.get(patient)
            if seen is None:
                latest[patient] = (at, event_id)
                if ends < self.expires:
                    self.expires = ends
                if len(latest) > 2 * self.cap:
                    self._keep_newest()
            elif at > seen[0]:
                latest[patient] = (at, event_id)
        if self.newest > self.expires:
            self._expire()
        return len(self.latest)

    def _expire(self) -> None:
        cutoff = self.newest - self.window
        self.latest = {p: seen for p, seen in self.latest.items() if seen[0] >= cutoff}
        oldest = min((seen[0] for seen in self.latest.values()), default=None)
        self.expires = float("inf") if oldest is None else oldest + self.window

    def _keep_newest(self) -> None:
        newest = sorted(self.latest.items(), key=_time_of)[-self.cap :]
        self.latest = dict(newest)
        self.expires = newest[0][1][0] + self.window

    def evidence(self) -> Evidence:
        """Each distinct patient's latest access in the window, oldest first."""
        return sorted(self.latest.values())


def _time_of(item: tuple[str, tuple[float, uuid.UUID]]) -> float:
    return item[1][0]


class RecentFailures:
    """The newest `threshold` failures of one principal or address. Once they span at most
    `window` seconds, that many failed within the window."""

    __slots__ = ("failures", "threshold", "window")

    def __init__(self, window: float, threshold: int) -> None:
        self.window = window
        self.threshold = threshold
        self.failures: Evidence = []

    @property
    def newest(self) -> float:
        return self.failures[-1][0] if self.failures else float("-inf")

    def add(self, at: float, event_id: uuid.UUID) -> Evidence | None:
        """Add one failure; the run of `threshold` failures within the window it is part of,
        if any (added again, the same run: an examination retried finds its case again)."""
        failures = self.failures
        if not any(known == event_id for _, known in failures):
            bisect.insort(failures, (at, event_id))
            if len(failures) > self.threshold:
                del failures[0]
        if len(failures) < self.threshold or failures[-1][0] - failures[0][0] > self.window:
            return None
        if not any(known == event_id for _, known in failures):
            return None  # older than the newest run
        return list(failures)
