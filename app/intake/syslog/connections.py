"""Who may connect, and how many at once: peers' addresses as sources name them, the
connection budgets (in all and per source) and the slot each connection holds in one, and log
lines that a flood of refusals cannot turn into a flood."""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0  # one line per kind of refused connection in this long


class LogLimiter:
    """At most one warning per kind every LOG_EVERY_S, saying how many more there were: a
    flood of connections, or of bad messages, must not become a flood of log lines."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.unlogged: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
            self.unlogged[kind] = self.unlogged.get(kind, 0) + 1
            return
        more = self.unlogged.pop(kind, 0)
        self.last[kind] = now
        since = f" ({more} more since the last line)" if more else ""
        log.warning(message + "%s", *args, since)

    def refused(self, kind: str, address: str, why: str) -> None:
        """A connection refused (`kind` its outcome)."""
        self.warning(kind, "syslog connection from %s refused: %s", address, why)


def peer_address(address: str) -> str:
    """A peer's address as sources name it: an IPv4-mapped IPv6 address as IPv4, IPv6 in its
    short form."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def source_key(address: str) -> str:
    """What the per-source caps count by: the address, or for IPv6 its /64 (one host is
    usually given a whole /64, so its addresses are one source)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip.packed[:8] + bytes(8), 64)))
    return str(ip)


@dataclass
class Budget:
    """Connections open at once, in all and per source (`source_key`), within two settings."""

    total: int
    per_source: int
    settings: tuple[str, str]  # their names, for the refusal's reason
    open: int = 0
    by_source: dict[str, int] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return self.open >= self.total

    def over_source(self, key: str) -> bool:
        return self.by_source.get(key, 0) >= self.per_source

    def refusal(self, key: str) -> str | None:
        """Why one more connection from the source is refused, or None."""
        if self.full:
            return f"{self.total} open ({self.settings[0]})"
        if self.over_source(key):
            return f"{self.per_source} open from it ({self.settings[1]})"
        return None

    def take(self, key: str) -> None:
        self.open += 1
        self.by_source[key] = self.by_source.get(key, 0) + 1

    def give_back(self, key: str) -> None:
        self.open -= 1
        left = self.by_source.pop(key, 1) - 1
        if left:
            self.by_source[key] = left


@dataclass(eq=False)
class Slot:
    """The budget one connection counts against, if any."""

    key: str
    budget: Budget | None = None

    def hold(self, budget: Budget) -> None:
        self.release()
        budget.take(self.key)
        self.budget = budget

    def release(self) -> None:
        if self.budget is not None:
            self.budget.give_back(self.key)
            self.budget = None
