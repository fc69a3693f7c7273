"""After a scenario: wait for the drain, then account for every id in PostgreSQL (and for what
each stored row says) and in the dead-letter stream, check the Redis counters, verify the chain,
and print the table."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as redis

from app.queue.dead_letters import event_ids
from app.queue.stream import StreamKeys
from loadtests.faults.content import STORED_COLUMNS, digest, stored_content
from loadtests.faults.driver import Tally

SHOWN_IDS = 10


@dataclass
class Expectation:
    """What a scenario tolerates: loss only of ids acknowledged within `loss_allowed_between`
    (monotonic times, both ends included; None: no loss at all). Only a fault that can take
    acknowledged writes with it (a machine crash under `appendfsync everysec`, not a process
    kill) has a window, and it ends when the fault struck."""

    loss_allowed_between: tuple[float, float] | None = None

    def allows_loss(self, accepted_at: float) -> bool:
        window = self.loss_allowed_between
        return window is not None and window[0] <= accepted_at <= window[1]


@dataclass
class Outcome:
    scenario: str
    accepted: int = 0
    stored: int = 0
    dead_lettered: int = 0
    lost: int = 0
    lost_allowed: int = 0
    duplicated: int = 0
    drain_s: float | None = None
    verified: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


async def drained(client: redis.Redis, shards: list[StreamKeys], timeout_s: float) -> float | None:
    """Seconds until no event is queued or pending in any shard (None: not within
    `timeout_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        left = 0
        for keys in shards:
            left += int(await client.get(keys.depth) or 0)
            left += await client.xlen(keys.high) + await client.xlen(keys.normal)
        if left == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return None


async def stored_digests(database_url: str, organization: str) -> dict[str, list[bytes]]:
    """Event id -> the content digest of each of its rows in audit_log (read in pages)."""
    columns = ", ".join(f'"{name}"' for name in STORED_COLUMNS if name != "details")
    query = (
        f"SELECT event_id::text AS event_id, {columns}, details::text AS details "
        "FROM audit_log WHERE organization_id = $1"
    )
    found: dict[str, list[bytes]] = {}
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            async for row in conn.cursor(query, organization, prefetch=2000):
                found.setdefault(row["event_id"], []).append(digest(stored_content(row)))
    finally:
        await conn.close()
    return found


async def dead_letter_ids(client: redis.Redis, shards: list[StreamKeys]) -> dict[str, list[str]]:
    """Event id -> the errors of the dead letters holding it, over every shard."""
    found: dict[str, list[str]] = {}
    for keys in shards:
        start = "-"
        while True:
            page: Any = await client.xrange(keys.dead, min=start, max="+", count=500)
            for dead_id, fields in page:
                for event_id in event_ids(fields.get(b"payload", b"")):
                    found.setdefault(event_id, []).append(fields.get(b"error", b"").decode())
                start = "(" + dead_id.decode()
            if len(page) < 500:
                break
    return found


async def counters_balance(client: redis.Redis, shards: list[StreamKeys]) -> str | None:
    """accepted = persisted + dead-lettered + queued + discarded in every shard, or what
    differs."""
    for n, keys in enumerate(shards):
        names = (keys.accepted, keys.persisted, keys.dead_events, keys.depth, keys.discarded)
        values = [int(v or 0) for v in await client.mget(*names)]
        accepted, persisted, dead, queued, discarded = values
        if accepted != persisted + dead + queued + discarded:
            return (
                f"shard {n}: queue counters do not balance: accepted {accepted} != persisted "
                f"{persisted} + dead {dead} + queued {queued} + discarded {discarded}"
            )
    return None


def shown(ids: set[str] | list[str]) -> str:
    listed = sorted(ids)
    more = f" (+{len(listed) - SHOWN_IDS} more)" if len(listed) > SHOWN_IDS else ""
    return ", ".join(listed[:SHOWN_IDS]) + more


def account(
    out: Outcome,
    tally: Tally,
    stored: dict[str, list[bytes]],
    dead: dict[str, list[str]],
    expect: Expectation,
) -> None:
    """Every accepted id stored exactly once with the content sent (the first content sent,
    for an id resent with other), or dead-lettered when it was meant to be."""
    accepted = set(tally.accepted_at)
    out.accepted = len(accepted)
    out.stored = sum(len(rows) for rows in stored.values())
    out.dead_lettered = sum(len(errors) for errors in dead.values())
    duplicated = {i for i, rows in stored.items() if len(rows) > 1}
    out.duplicated = len(duplicated)
    missing = {i for i in accepted - tally.poison if i not in stored}
    allowed = {i for i in missing if expect.allows_loss(tally.accepted_at[i])}
    out.lost, out.lost_allowed = len(missing), len(allowed)
    if duplicated:
        out.problems.append(f"stored more than once: {shown(duplicated)}")
    if missing - allowed:
        out.problems.append(f"accepted (202) and never stored: {shown(missing - allowed)}")
    if stray := set(stored).difference(tally.sent, tally.conflicts_sent):
        out.problems.append(f"stored but never sent: {shown(stray)}")
    sent = tally.sent
    if changed := {i for i, rows in stored.items() if i in sent and set(rows) != {sent[i]}}:
        out.problems.append(f"stored with other content: {shown(changed)}")
    if tally.refused:
        out.problems.append(f"requests refused for good (not 202/503): {shown(tally.refused)}")
    if tally.misanswered:
        out.problems.append(f"202 answers naming other ids than sent: {shown(tally.misanswered)}")
    check_dead_letters(out, tally, set(stored), dead)


def check_dead_letters(
    out: Outcome, tally: Tally, stored: set[str], dead: dict[str, list[str]]
) -> None:
    """Poison events and conflicting resends, and nothing else, are in the dead-letter stream."""
    problems = out.problems
    if stored_poison := tally.poison & stored:
        problems.append(f"poison events stored: {shown(stored_poison)}")
    if undead := (tally.poison & set(tally.accepted_at)) - set(dead):
        problems.append(f"poison events accepted but not dead-lettered: {shown(undead)}")
    if unconflicted := tally.conflicts - set(dead):
        problems.append(f"conflicting resends not dead-lettered: {shown(unconflicted)}")
    if wrongly_dead := set(dead) - tally.poison - tally.conflicts_sent:
        problems.append(f"good events dead-lettered: {shown(wrongly_dead)}")
    if tally.poison or tally.conflicts_sent:
        kinds = Counter(e.split(",")[0].split(":")[0] for errs in dead.values() for e in errs)
        poison = len(tally.poison & set(tally.accepted_at))
        out.notes.append(
            f"{poison} poison events and {len(tally.conflicts)} conflicting resends accepted; "
            f"dead letters: {dict(kinds)}"
        )


def table(outcomes: list[Outcome]) -> str:
    head = (
        f"{'scenario':<18}{'accepted':>10}{'stored':>10}{'dead':>6}{'lost':>6}{'dup':>5}"
        f"{'drain s':>9}{'run s':>7}  {'verify':<7}result"
    )
    lines = [head, "-" * len(head)]
    for o in outcomes:
        lost = f"{o.lost}" + ("*" if o.lost_allowed else "")
        drain = "-" if o.drain_s is None else f"{o.drain_s:.1f}"
        lines.append(
            f"{o.scenario:<18}{o.accepted:>10}{o.stored:>10}{o.dead_lettered:>6}{lost:>6}"
            f"{o.duplicated:>5}{drain:>9}{o.seconds:>7.0f}  {'ok' if o.verified else 'FAIL':<7}"
            f"{'pass' if o.passed else 'FAIL'}"
        )
    if any(o.lost_allowed for o in outcomes):
        lines.append("* lost, all of them acknowledged within the scenario's loss window")
    for o in outcomes:
        for note in o.notes:
            lines.append(f"  {o.scenario}: {note}")
        for problem in o.problems:
            lines.append(f"  {o.scenario}: PROBLEM: {problem}")
    return "\n".join(lines)
