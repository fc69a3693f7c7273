"""Rule settings and working hours: the defaults every organization starts with, and a setting that
cannot be used refused with what is wrong."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from app.watch.rules import (
    RULES,
    AfterHoursParams,
    BulkExportParams,
    VolumeParams,
    WatchConfigError,
    default_setting,
    relation_kind,
    restricted_category,
    rule_setting,
)
from app.watch.schedule import Schedule, ScheduleError


def test_every_rule_runs_on_day_one_with_its_defaults() -> None:
    assert list(RULES) == [
        "restricted",
        "relationship",
        "after_hours",
        "volume",
        "break_glass",
        "failed_sign_ins",
        "bulk_export",
    ]
    settings = {name: default_setting(name) for name in RULES}
    assert all(s.enabled for s in settings.values())
    assert {name: s.severity for name, s in settings.items()} == {
        "restricted": "high",
        "relationship": "high",
        "after_hours": "low",
        "volume": "medium",
        "break_glass": "medium",
        "failed_sign_ins": "medium",
        "bulk_export": "high",
    }
    hours = settings["after_hours"].params
    assert isinstance(hours, AfterHoursParams)
    assert hours.time_zone == "UTC" and hours.exempt_principal_types == ("service",)
    assert hours.weekly_hours["mon"] == ("07:00-19:00",) and hours.weekly_hours["sun"] == ()
    volume = settings["volume"].params
    assert isinstance(volume, VolumeParams)
    assert (volume.window_s, volume.limit, volume.multiple, volume.baseline_days) == (
        3600,
        100,
        5.0,
        30,
    )


def test_a_setting_keeps_the_defaults_of_the_params_it_does_not_give() -> None:
    setting = rule_setting("volume", severity="high", params={"limit": 40})
    assert setting.severity == "high" and setting.enabled
    assert setting.params == VolumeParams(limit=40)
    export = rule_setting("bulk_export", enabled=False, params={"actions": ["ehr.*.print"]})
    assert not export.enabled and export.severity == "high"
    assert isinstance(export.params, BulkExportParams)
    assert export.params.actions == ("ehr.*.print",) and export.params.threshold == 1000


@pytest.mark.parametrize(
    ("rule", "options", "message"),
    [
        ("snooping", {}, "unknown rule 'snooping'; the rules are restricted, relationship,"),
        ("volume", {"severity": "urgent"}, "volume: unknown severity 'urgent'"),
        ("volume", {"enabled": "yes"}, "volume: enabled must be true or false"),
        ("volume", {"params": {"limit": 0}}, "volume: limit: Input should be greater than or"),
        ("volume", {"params": {"limt": 5}}, "volume: limt: not a parameter of this rule"),
        ("volume", {"params": [1]}, "volume: params must be an object"),
        ("break_glass", {"params": {"window_s": 60}}, "break_glass: window_s: not a parameter"),
        (
            "after_hours",
            {"params": {"time_zone": "Mars/Olympus_Mons"}},
            "after_hours: time_zone: invalid time zone 'Mars/Olympus_Mons': an IANA name",
        ),
        (
            "after_hours",
            {"params": {"time_zone": "../../etc/passwd"}},
            "after_hours: time_zone: invalid time zone '../../etc/passwd'",
        ),
        (
            "after_hours",
            {"params": {"weekly_hours": {"mon": ["19:00-07:00"]}}},
            "after_hours: weekly_hours: hours '19:00-07:00' on mon end before they start; split",
        ),
        (
            "after_hours",
            {"params": {"weekly_hours": {"monday": ["07:00-19:00"]}}},
            "after_hours: weekly_hours: unknown day 'monday' in the weekly hours",
        ),
        (
            "after_hours",
            {"params": {"weekly_hours": {"tue": ["7-19"]}}},
            "after_hours: weekly_hours: hours '7-19' on tue: write them as HH:MM-HH:MM",
        ),
        (
            "after_hours",
            {"params": {"weekly_hours": {"tue": ["07:00-24:30"]}}},
            "hours '07:00-24:30' on tue: a day ends at 24:00",
        ),
        (
            "after_hours",
            {"params": {"holidays": ["2026-13-01"]}},
            "after_hours: holidays.0: Input should be a valid date",
        ),
        (
            "after_hours",
            {"params": {"classifications": ["SECRET"]}},
            "after_hours: classifications.0: Input should be 'PUBLIC', 'INTERNAL'",
        ),
        (
            "failed_sign_ins",
            {"params": {"by": ["session"]}},
            "failed_sign_ins: by.0: Input should be 'principal' or 'ip_address'",
        ),
        (
            "bulk_export",
            {"params": {"actions": ["report.%"]}},
            "bulk_export: actions: action pattern 'report.%': letters, digits",
        ),
    ],
)
def test_a_setting_that_cannot_be_used_is_refused_with_what_is_wrong(
    rule: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(WatchConfigError) as refused:
        rule_setting(rule, **options)
    assert str(refused.value).startswith(message) or message in str(refused.value), refused.value


def test_categories_and_relations_are_checked() -> None:
    assert restricted_category("vip") == "vip"
    assert relation_kind("coworker") == "coworker"
    with pytest.raises(WatchConfigError, match="unknown category 'celebrity'; a restricted"):
        restricted_category("celebrity")
    with pytest.raises(WatchConfigError, match="unknown relation 'friend'; a relationship is"):
        relation_kind("friend")


CHICAGO_WEEK = {day: ["08:00-12:00", "13:00-17:30"] for day in ("mon", "tue", "wed", "thu", "fri")}
CHICAGO_WEEK["sat"] = ["22:00-24:00"]
CHICAGO_WEEK["sun"] = ["00:00-06:00"]


@pytest.mark.parametrize(
    ("moment", "working", "local_day"),
    [
        # Wednesday 2 December 2026 in Chicago (UTC-6).
        (datetime(2026, 12, 2, 14, 0, tzinfo=UTC), True, date(2026, 12, 2)),  # 08:00
        (datetime(2026, 12, 2, 13, 59, tzinfo=UTC), False, date(2026, 12, 2)),  # 07:59
        (datetime(2026, 12, 2, 18, 30, tzinfo=UTC), False, date(2026, 12, 2)),  # 12:30, lunch
        (datetime(2026, 12, 2, 23, 29, tzinfo=UTC), True, date(2026, 12, 2)),  # 17:29
        (datetime(2026, 12, 2, 23, 30, tzinfo=UTC), False, date(2026, 12, 2)),  # 17:30
        (datetime(2026, 12, 3, 3, 0, tzinfo=UTC), False, date(2026, 12, 2)),  # 21:00, local Wed
        (datetime(2026, 12, 25, 16, 0, tzinfo=UTC), False, date(2026, 12, 25)),  # a holiday
        # A night shift from Saturday 22:00 into Sunday 06:00.
        (datetime(2026, 12, 6, 4, 30, tzinfo=UTC), True, date(2026, 12, 5)),  # Sat 22:30
        (datetime(2026, 12, 6, 11, 59, tzinfo=UTC), True, date(2026, 12, 6)),  # Sun 05:59
        (datetime(2026, 12, 6, 12, 0, tzinfo=UTC), False, date(2026, 12, 6)),  # Sun 06:00
        # Summer time (UTC-5): 08:00 local is 13:00 UTC.
        (datetime(2026, 7, 1, 13, 0, tzinfo=UTC), True, date(2026, 7, 1)),
        (datetime(2026, 7, 1, 12, 59, tzinfo=UTC), False, date(2026, 7, 1)),
    ],
)
def test_working_hours_in_the_organizations_time_zone(
    moment: datetime, working: bool, local_day: date
) -> None:
    schedule = Schedule.of("America/Chicago", CHICAGO_WEEK, [date(2026, 12, 25)])
    within, start, end = schedule.place(moment.timestamp())
    assert within is working
    assert datetime.fromtimestamp(start, schedule.zone).date() == local_day
    assert datetime.fromtimestamp(start, schedule.zone).time().hour == 0
    assert start <= moment.timestamp() < end
    assert schedule.place(moment.timestamp() + 0.5) == (within, start, end)  # the cached minute


def test_a_local_day_is_23_or_25_hours_when_the_clocks_change() -> None:
    schedule = Schedule.of("America/Chicago", {})
    _, start, end = schedule.place(datetime(2026, 3, 8, 12, 0, tzinfo=UTC).timestamp())
    assert end - start == 23 * 3600
    _, start, end = schedule.place(datetime(2026, 11, 1, 12, 0, tzinfo=UTC).timestamp())
    assert end - start == 25 * 3600


def test_an_empty_week_has_no_working_hours() -> None:
    schedule = Schedule.of("UTC", {})
    assert not schedule.place(datetime(2026, 12, 2, 10, 0, tzinfo=UTC).timestamp())[0]
    with pytest.raises(ScheduleError):
        Schedule.of("Nowhere/City", {})
