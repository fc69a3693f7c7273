"""The state of the rules that count over a sliding window, kept in memory, bounded, and the same
whether an access is added once or again (an examination retried after a failed commit, a
principal's recent past read back from audit_log on top of what was already examined)."""

from __future__ import annotations

import bisect
import uuid
from collections import OrderedDict

Evidence = list[tuple[float, uuid.UUID]]  # (time, event id), oldest first


class DistinctPatients:
    """The distinct patients one principal accessed within `window` seconds of its newest access,
    each with its latest access; at most `cap` of them (the rule only needs to know a count
    reached its limit), the oldest let go first. An access older than the window is ignored."""

    __slots__ = ("cap", "expires", "latest", "newest", "window")

    def __init__(self, window: float, cap: int) -> None:
        self.window = window
        self.cap = cap
        self.latest: OrderedDict[str, tuple[float, uuid.UUID]] = OrderedDict()
        self.newest = float("-inf")
        # No entry is older than the window until the newest access passes this time (the
        # oldest entry's time plus the window, or earlier).
        self.expires = float("inf")

    def add(self, at: float, patient: str, event_id: uuid.UUID) -> int:
        """Add one access; the count of distinct patients in the window after it."""
        if at > self.newest:
            self.newest = at
        latest = self.latest
        if at + self.window >= self.newest:
            seen = latest.get(patient)
            if seen is None:
                if not latest:
                    self.expires = at + self.window
                latest[patient] = (at, event_id)
                if len(latest) > self.cap:
                    latest.popitem(last=False)
            elif at > seen[0]:
                latest[patient] = (at, event_id)
                latest.move_to_end(patient)
        if self.newest > self.expires:
            self._expire()
        return len(latest)

    def _expire(self) -> None:
        latest, cutoff = self.latest, self.newest - self.window
        while latest:
            oldest = next(iter(latest.values()))[0]
            if oldest >= cutoff:
                self.expires = oldest + self.window
                return
            latest.popitem(last=False)
        self.expires = float("inf")

    def evidence(self) -> Evidence:
        """Each distinct patient's latest access in the window, oldest first."""
        return sorted(self.latest.values())


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
