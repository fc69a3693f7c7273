"""Whether events may join the queue now: the one admission step of ingest and of replays.

In order: a key may mark events `priority: high` only with the `priority` scope (403); its
events per second and its organization's (per API process, token buckets) must be there (429);
the queue as a whole must stay under `max_queue_depth` (503 for everyone); and the organization
may hold at most `org_queue_share` of it (429; all processes together: the counts come from
Redis every `depth_poll_ms`, and between two polls each process adds what it admitted). One
tenant can thus neither take the writers' attention first nor fill the queue every tenant
shares.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from app.core.config import Settings
from app.core.errors import Backpressure, Forbidden
from app.core.limits import QueueQuotaExceeded, TokenBuckets, TooManyRequests, retry_after

PRIORITY_SCOPE = "priority"
T = TypeVar("T")


def _buckets(rate: float, settings: Settings) -> TokenBuckets:
    return TokenBuckets(rate, max(2 * rate, settings.max_events_per_request))


@dataclass
class Admission:
    """What this API process knows of the queue and of each caller's rate."""

    settings: Settings
    queued_events: int = 0
    queued_by_org: dict[str, int] = field(default_factory=dict)
    key_rates: TokenBuckets = field(init=False)
    org_rates: TokenBuckets = field(init=False)
    # Events this process admitted, ever: what a count read from Redis misses is what was
    # admitted after the read began (see `refresh`).
    _admitted: int = 0
    _admitted_by_org: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key_rates = _buckets(self.settings.rate_limit_key_events, self.settings)
        self.org_rates = _buckets(self.settings.rate_limit_org_events, self.settings)

    @property
    def org_quota(self) -> int:
        return max(1, int(self.settings.max_queue_depth * self.settings.org_queue_share))

    def admit(
        self,
        key_id: str,
        scopes: frozenset[str],
        organization: str,
        events: int,
        *,
        high: bool = False,
        rated: bool = True,
        quota: bool = True,
    ) -> None:
        """Raise unless `events` may be queued now; admitted, they count as queued at once
        (`not_queued` gives them back when the queue then refuses them)."""
        if high and PRIORITY_SCOPE not in scopes:
            raise Forbidden("events with priority high need an API key with the 'priority' scope")
        if rated:
            self._within_rate(key_id, organization, events)
        if self.queued_events + events > self.settings.max_queue_depth:
            raise Backpressure("the queue is full; retry later", headers=retry_after(1))
        held = self.queued_by_org.get(organization, 0)
        if quota and held + events > self.org_quota:
            raise QueueQuotaExceeded(
                f"your organization has {held:,} events queued; its quota is "
                f"{self.org_quota:,}: retry later",
                headers=retry_after(1),
            )
        if rated:  # spent only by what is admitted: a refused request costs no tokens
            self.key_rates.spend(key_id, events)
            self.org_rates.spend(organization, events)
        self._count(organization, events)  # held now, so requests meanwhile count it

    def _within_rate(self, key_id: str, organization: str, events: int) -> None:
        wait = max(
            self.key_rates.wait_for(key_id, events), self.org_rates.wait_for(organization, events)
        )
        if wait > 0:
            raise TooManyRequests(
                "over the rate limit of this API key or its organization: retry later",
                headers=retry_after(wait),
            )

    def not_queued(self, organization: str, events: int) -> None:
        """Admitted events that could not be queued after all (Redis refused)."""
        self._count(organization, -events)

    def _count(self, organization: str, events: int) -> None:
        self.queued_events += events
        self.queued_by_org[organization] = self.queued_by_org.get(organization, 0) + events
        self._admitted += events
        self._admitted_by_org[organization] = self._admitted_by_org.get(organization, 0) + events

    def mark(self) -> tuple[int, dict[str, int]]:
        """What this process had admitted when a read of the counts from Redis began."""
        return self._admitted, dict(self._admitted_by_org)

    def refresh(
        self, queued: int, by_org: dict[str, int], mark: tuple[int, dict[str, int]]
    ) -> None:
        """Take the counts read from Redis, plus what was admitted here since the read began
        (`mark`): a poll never forgets what was just admitted."""
        total, orgs = mark
        self.queued_events = queued + self._admitted - total
        counts = dict(by_org)
        for organization, admitted in self._admitted_by_org.items():
            since = admitted - orgs.get(organization, 0)
            if since:
                counts[organization] = counts.get(organization, 0) + since
        self.queued_by_org = counts


async def admit_and_queue(
    admission: Admission,
    key_id: str,
    scopes: frozenset[str],
    organization: str,
    events: int,
    put: Callable[[], Awaitable[T]],
    *,
    high: bool = False,
    rated: bool = True,
    quota: bool = True,
    recount: bool = False,
) -> T:
    """The one way events join the queue (ingest, replays, the records of reads): admitted
    first (`Admission.admit`: priority scope, rates unless not `rated`, the queue's depth, the
    organization's quota unless not `quota`), then `put`. When `put` fails the events are given
    back; with `recount` they are given back after a put too, for a put that moves entries the
    next poll of the queue counts (a replay)."""
    admission.admit(key_id, scopes, organization, events, high=high, rated=rated, quota=quota)
    try:
        result = await put()
    except BaseException:
        admission.not_queued(organization, events)
        raise
    if recount:
        admission.not_queued(organization, events)
    return result
