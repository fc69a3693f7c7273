"""Working hours of an organization: its time zone, the hours of each day of the week and its
holidays. Pure: what is within them, and the bounds of the local day a moment falls in.

Hours are `HH:MM-HH:MM` ranges in local time, the end after the start (`24:00` ends a day); a
night shift crossing midnight is two ranges, one on each day. A holiday is off all day.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
MINUTES_A_DAY = 24 * 60

# Mapping moments to their local minute is the after-hours rule's cost per event: answers are
# kept per minute since the epoch, and the table is emptied past this many.
CACHED_MINUTES = 200_000


class ScheduleError(ValueError):
    """Working hours that cannot be used, with what is wrong."""


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (`America/Chicago`, `UTC`)."""
    if not isinstance(name, str) or not name or name != name.strip() or ".." in name:
        raise ScheduleError(f"invalid time zone {name!r}: an IANA name such as America/Chicago")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"invalid time zone {name!r}: an IANA name such as America/Chicago"
        ) from exc


def day_ranges(day: str, ranges: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """`["07:00-12:00", "13:00-19:00"]` as minutes of the day, sorted."""
    parsed = []
    for text in ranges:
        match = HOURS.match(text) if isinstance(text, str) else None
        if match is None:
            raise ScheduleError(
                f"hours {text!r} on {day}: write them as HH:MM-HH:MM, such as 07:00-19:00"
            )
        start = int(match.group(1)) * 60 + int(match.group(2))
        end = int(match.group(3)) * 60 + int(match.group(4))
        if end > MINUTES_A_DAY:
            raise ScheduleError(f"hours {text!r} on {day}: a day ends at 24:00")
        if end <= start:
            raise ScheduleError(
                f"hours {text!r} on {day} end before they start; split a shift that crosses "
                "midnight into two ranges, one on each day"
            )
        parsed.append((start, end))
    return tuple(sorted(parsed))


def weekly_hours(hours: Mapping[str, Sequence[str]]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Hours by day (`mon` ... `sun`; a day not named has none) as minute ranges, Monday first."""
    unknown = sorted(set(hours) - set(DAYS))
    if unknown:
        raise ScheduleError(f"unknown day {unknown[0]!r} in the weekly hours: days are {DAYS}")
    return tuple(day_ranges(day, hours.get(day, ())) for day in DAYS)


@dataclass(frozen=True, slots=True)
class Schedule:
    zone: ZoneInfo
    week: tuple[tuple[tuple[int, int], ...], ...]  # per weekday, Monday first: minute ranges
    holidays: frozenset[date]
    # minute since the epoch -> (within working hours, local day's start, its end), in seconds
    _minutes: dict[int, tuple[bool, float, float]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(
        cls, zone: str, hours: Mapping[str, Sequence[str]], holidays: Sequence[date] = ()
    ) -> Schedule:
        return cls(time_zone(zone), weekly_hours(hours), frozenset(holidays))

    def working(self, local: datetime) -> bool:
        """Whether a local time is within working hours."""
        if local.date() in self.holidays:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.week[local.weekday()])

    def place(self, at: float) -> tuple[bool, float, float]:
        """For a moment (seconds since the epoch): whether it is within working hours, and the
        start and end of its local day (seconds since the epoch). Working hours are whole
        minutes and so are time zones' offsets: one answer holds for a whole minute."""
        minute = int(at // 60)
        found = self._minutes.get(minute)
        if found is None:
            if len(self._minutes) >= CACHED_MINUTES:
                self._minutes.clear()
            found = self._minutes[minute] = self._place(minute * 60)
        return found

    def _place(self, at: int) -> tuple[bool, float, float]:
        local = datetime.fromtimestamp(at, self.zone)
        midnight = datetime.combine(local.date(), datetime.min.time(), self.zone)
        following = datetime.combine(
            local.date() + timedelta(days=1), datetime.min.time(), self.zone
        )
        return (
            self.working(local),
            midnight.astimezone(UTC).timestamp(),
            following.astimezone(UTC).timestamp(),
        )
