"""The rules, their parameters and defaults, and the checks a setting must pass.

Every rule runs for every organization with the defaults below until the organization stores a
setting of its own (watch_rule_settings: enabled, severity, params). A setting is checked here
before it is stored and again when it is read: an unknown rule, a parameter that is not one of
the rule's, an invalid time zone or schedule is refused with a WatchConfigError saying which and
why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.events.fields import Classification
from app.watch.schedule import DAYS, Schedule, time_zone, weekly_hours

Severity = Literal["low", "medium", "high"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high")

RESTRICTED = "restricted"
RELATIONSHIP = "relationship"
AFTER_HOURS = "after_hours"
VOLUME = "volume"
BREAK_GLASS = "break_glass"
FAILED_SIGN_INS = "failed_sign_ins"
BULK_EXPORT = "bulk_export"

CATEGORIES = ("vip", "employee", "confidential")  # of a restricted patient
RELATIONS = ("self", "relative", "coworker")  # of a principal to a patient

# An action pattern: the characters of an action name, and `*` for any run of them.
ACTION_PATTERN = re.compile(r"^[A-Za-z0-9_.*-]{1,128}$")

PrincipalTypes = Annotated[
    tuple[Annotated[str, Field(min_length=1, max_length=128)], ...], Field(max_length=64)
]


class WatchConfigError(ValueError):
    """A rule setting, restricted patient or relationship that cannot be used."""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestrictedParams(Params):
    """Access to a patient on the organization's restricted list (VIP, employee, confidential).
    Service accounts (interface engines filing a result) are exempt by default."""

    exempt_principal_types: PrincipalTypes = ("service",)


class RelationshipParams(Params):
    """A principal opening the chart of a patient listed as themself, a relative or a
    coworker. No parameters: the pairs are the organization's list."""


DEFAULT_WEEK: dict[str, tuple[str, ...]] = {
    day: ("07:00-19:00",) if day not in ("sat", "sun") else () for day in DAYS
}


class AfterHoursParams(Params):
    """Access to data of the given classifications outside working hours in the
    organization's time zone (weekends and holidays included); service accounts exempt by
    default. The time zone also says where an organization's days begin for every rule that
    groups a day's access into one case."""

    time_zone: str = "UTC"
    weekly_hours: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(DEFAULT_WEEK))
    holidays: tuple[date, ...] = Field(default=(), max_length=1000)
    classifications: tuple[Classification, ...] = ("PHI",)
    exempt_principal_types: PrincipalTypes = ("service",)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        time_zone(value)
        return value

    @field_validator("weekly_hours")
    @classmethod
    def _hours(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        weekly_hours(value)
        return value

    def schedule(self) -> Schedule:
        return Schedule.of(self.time_zone, self.weekly_hours, self.holidays)


class VolumeParams(Params):
    """Distinct patients one principal accessed in a sliding window of `window_s`: above
    `limit`, or at least `baseline_min_patients` and above `multiple` times the principal's
    baseline (the median of its distinct patients per window over the `baseline_days` before
    the day, counted over windows it was active in; at least `baseline_min_windows` of them, or
    it has no baseline yet)."""

    window_s: int = Field(default=3600, ge=60, le=86_400)
    limit: int = Field(default=100, ge=1, le=10_000)
    multiple: float = Field(default=5.0, gt=1, le=1000)
    baseline_days: int = Field(default=30, ge=1, le=90)
    baseline_min_patients: int = Field(default=20, ge=1, le=10_000)
    baseline_min_windows: int = Field(default=5, ge=1, le=10_000)
    exempt_principal_types: PrincipalTypes = ("service",)


class BreakGlassParams(Params):
    """Every break-glass access opens a case: one per principal and patient a day."""


SignInSubject = Literal["principal", "ip_address"]


class FailedSignInsParams(Params):
    """`threshold` failures of actions starting with `action_prefix` within `window_s`, from
    one principal or one address."""

    threshold: int = Field(default=5, ge=2, le=1000)
    window_s: int = Field(default=900, ge=10, le=86_400)
    action_prefix: str = Field(default="auth.", min_length=1, max_length=128)
    by: tuple[SignInSubject, ...] = Field(default=("principal", "ip_address"), min_length=1)


class BulkExportParams(Params):
    """An action matching one of `actions` (`*` matches any characters) whose details give more
    than `threshold` records: a number under one of `count_keys`, or the length of a list
    there."""

    threshold: int = Field(default=1000, ge=1)
    actions: tuple[str, ...] = Field(
        default=("*export*", "*.search", "*query*", "report.*"), min_length=1, max_length=100
    )
    count_keys: tuple[str, ...] = Field(
        default=("record_count", "records", "rows", "results", "count", "resources", "entries"),
        min_length=1,
        max_length=32,
    )

    @field_validator("actions")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not ACTION_PATTERN.match(pattern):
                raise ValueError(
                    f"action pattern {pattern!r}: letters, digits, '.', '_', '-' and '*' only"
                )
        return value


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    params: type[Params]
    severity: Severity
    title: str


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(RESTRICTED, RestrictedParams, "high", "access to a restricted patient"),
        Rule(RELATIONSHIP, RelationshipParams, "high", "access to one's own or a relation's chart"),
        Rule(AFTER_HOURS, AfterHoursParams, "low", "access outside working hours"),
        Rule(VOLUME, VolumeParams, "medium", "unusual number of patients"),
        Rule(BREAK_GLASS, BreakGlassParams, "medium", "break-glass access"),
        Rule(FAILED_SIGN_INS, FailedSignInsParams, "medium", "repeated failed sign-ins"),
        Rule(BULK_EXPORT, BulkExportParams, "high", "bulk export"),
    )
}


@dataclass(frozen=True, slots=True)
class RuleSetting:
    """One rule as an organization runs it."""

    rule: str
    enabled: bool
    severity: Severity
    params: Params


def rule_of(name: str) -> Rule:
    rule = RULES.get(name) if isinstance(name, str) else None
    if rule is None:
        raise WatchConfigError(f"unknown rule {name!r}; the rules are {', '.join(RULES)}")
    return rule


def default_setting(name: str) -> RuleSetting:
    rule = rule_of(name)
    return RuleSetting(rule.name, True, rule.severity, rule.params())


def rule_setting(
    name: str,
    *,
    enabled: bool = True,
    severity: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> RuleSetting:
    """A rule setting checked: the rule exists, the severity is one of SEVERITIES, and the
    params are the rule's (those not given keep their defaults)."""
    rule = rule_of(name)
    if severity is not None and severity not in SEVERITIES:
        raise WatchConfigError(
            f"{name}: unknown severity {severity!r}; severities are {', '.join(SEVERITIES)}"
        )
    if not isinstance(enabled, bool):
        raise WatchConfigError(f"{name}: enabled must be true or false")
    if params is not None and not isinstance(params, Mapping):
        raise WatchConfigError(f"{name}: params must be an object")
    try:
        checked = rule.params.model_validate(dict(params or {}))
    except ValidationError as exc:
        raise WatchConfigError(f"{name}: {_problems(exc)}") from None
    chosen: Severity = rule.severity if severity is None else severity
    return RuleSetting(rule.name, enabled, chosen, checked)


def _problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line each: where, and what is wrong (a check's own message as
    it is)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "params"
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if isinstance(cause, ValueError) else error["msg"]
        if error["type"] == "extra_forbidden":
            message = "not a parameter of this rule"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def restricted_category(category: str) -> str:
    if category not in CATEGORIES:
        raise WatchConfigError(
            f"unknown category {category!r}; a restricted patient is {', '.join(CATEGORIES)}"
        )
    return category


def relation_kind(kind: str) -> str:
    if kind not in RELATIONS:
        raise WatchConfigError(
            f"unknown relation {kind!r}; a relationship is {', '.join(RELATIONS)}"
        )
    return kind
