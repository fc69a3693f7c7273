"""The rules applied to accesses, entry after entry and, within the entries of one step, in
event time order (the windows slide in event time). No I/O: the detector
(app.watch.detector) reads the accesses, each organization's rules and what the windowed rules
need from before (a principal's recent past, its baseline), and stores what this finds.

Each case has a key (app.watch.cases.CaseKey) whose window is fixed by the rule, not by when an
access happened to be examined: the day (in the organization's time zone) for the restricted
list, relationships, break-glass and after-hours access; the window of `window_s` seconds since
the epoch that the access completing a count falls in for volume and failed sign-ins; the
access itself for a bulk export. Found again, by another detector or after a restart, a case is
the same case.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import orjson

from app.watch.cases import Access, CaseKey, Draft, micros
from app.watch.rules import (
    AFTER_HOURS,
    BREAK_GLASS,
    BULK_EXPORT,
    FAILED_SIGN_INS,
    RELATIONSHIP,
    RESTRICTED,
    RULES,
    VOLUME,
    AfterHoursParams,
    BulkExportParams,
    FailedSignInsParams,
    RestrictedParams,
    RuleSetting,
    VolumeParams,
    default_setting,
)
from app.watch.schedule import Schedule
from app.watch.windows import DistinctPatients, Evidence, RecentFailures

DAY_S = 86_400
P = TypeVar("P")

# Cases committed lately, not drafted again while their window lasts; past this many, those of
# windows that ended are let go.
REMEMBERED_CASES = 100_000


def action_matcher(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regular expression for action patterns (`*` any characters, the rest literal)."""
    alternatives = ("".join(".*" if c == "*" else re.escape(c) for c in p) for p in patterns)
    return re.compile("(?:" + "|".join(alternatives) + r")\Z")


def like_pattern(pattern: str) -> str:
    """An action pattern as a SQL LIKE pattern (`\\` escapes `_` and `%`)."""
    return pattern.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%").replace("*", "%")


def record_count(details: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    """The largest count the details give under `keys`: a number, or a list's length."""
    found = None
    for key in keys:
        value = details.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            count = value
        elif isinstance(value, list):
            count = len(value)
        else:
            continue
        found = count if found is None else max(found, count)
    return found


@dataclass(slots=True)
class OrgRules:
    """One organization's rules, ready for evaluation: what each rule needs per access is a
    plain attribute (None or empty when the rule is off)."""

    organization_id: str
    settings: dict[str, RuleSetting]
    restricted: dict[str, str]  # patient -> category
    relations: dict[str, dict[str, str]]  # principal -> patient -> relation
    schedule: Schedule = field(init=False)
    hours: AfterHoursParams = field(init=False)
    after_hours: bool = field(init=False)
    after_hours_classes: frozenset[str] = field(init=False)
    after_hours_exempt: frozenset[str | None] = field(init=False)
    restricted_exempt: frozenset[str | None] = field(init=False)
    break_glass: bool = field(init=False)
    volume: VolumeParams | None = field(init=False)
    volume_exempt: frozenset[str | None] = field(init=False)
    failures: FailedSignInsParams | None = field(init=False)
    export: BulkExportParams | None = field(init=False)
    _exports: dict[str, bool] = field(init=False, default_factory=dict)
    _export_pattern: re.Pattern[str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        for name in RULES:
            self.settings.setdefault(name, default_setting(name))
        hours = self.settings[AFTER_HOURS].params
        assert isinstance(hours, AfterHoursParams)
        self.hours = hours
        self.schedule = hours.schedule()  # days are local days for every rule
        self.after_hours = self.on(AFTER_HOURS)
        self.after_hours_classes = frozenset(hours.classifications)
        self.after_hours_exempt = frozenset(hours.exempt_principal_types)
        restricted = self._params(RESTRICTED, RestrictedParams)
        if restricted is None:
            self.restricted = {}
        self.restricted_exempt = frozenset(restricted.exempt_principal_types if restricted else ())
        if not self.on(RELATIONSHIP):
            self.relations = {}
        self.break_glass = self.on(BREAK_GLASS)
        self.volume = self._params(VOLUME, VolumeParams)
        self.volume_exempt = frozenset(self.volume.exempt_principal_types if self.volume else ())
        self.failures = self._params(FAILED_SIGN_INS, FailedSignInsParams)
        self.export = self._params(BULK_EXPORT, BulkExportParams)
        if self.export is not None:
            self._export_pattern = action_matcher(self.export.actions)

    @property
    def reach(self) -> int:
        """How far back the windowed rules look, in seconds (0: neither runs)."""
        return max(
            self.volume.window_s if self.volume else 0,
            self.failures.window_s if self.failures else 0,
        )

    @classmethod
    def defaults(cls, organization_id: str) -> OrgRules:
        return cls(organization_id, {}, {}, {})

    def _params(self, rule: str, kind: type[P]) -> P | None:
        setting = self.settings[rule]
        params = setting.params
        assert isinstance(params, kind)
        return params if setting.enabled else None

    def on(self, rule: str) -> bool:
        return self.settings[rule].enabled

    def severity(self, rule: str) -> str:
        return self.settings[rule].severity

    def exported(self, action: str) -> bool:
        """Whether the bulk export rule reads this action's details."""
        known = self._exports.get(action)
        if known is None:
            pattern = self._export_pattern
            known = self._exports[action] = bool(pattern and pattern.match(action))
        return known


class Candidate(NamedTuple):
    """A principal's distinct patients over the baseline's floor in a window, whose baseline is
    not known yet: it becomes a volume case if the count is above the multiple of it."""

    rules: OrgRules
    access: Access
    patients: int
    window: DistinctPatients  # its evidence is taken when the case is raised


BaselineKey = tuple[str, str, int]  # organization, principal, UTC day (days since the epoch)


@dataclass(slots=True)
class Examination:
    """What one examination found: cases, and volume counts waiting for their baselines."""

    drafts: dict[CaseKey, Draft] = field(default_factory=dict)
    candidates: dict[CaseKey, Candidate] = field(default_factory=dict)
    # (organization, principal, local day's start) -> its after-hours case (None: stored)
    nights: dict[tuple[str, str, float], Draft | None] = field(default_factory=dict)

    def baselines_wanted(self) -> dict[str, set[tuple[str, int]]]:
        """(principal, day) whose baseline the candidates need, by organization."""
        wanted: dict[str, set[tuple[str, int]]] = {}
        for key, candidate in self.candidates.items():
            day = int(candidate.access.at // DAY_S)
            wanted.setdefault(key.organization_id, set()).add((candidate.access.principal_id, day))
        return wanted


def _day(rules: OrgRules, at: float) -> tuple[int, int]:
    _, start, end = rules.schedule.place(at)
    return micros(start), micros(end)


class Examiner:
    """Applies the rules to accesses; holds the windowed rules' state since `started_at`
    (seconds since the epoch: before it, a principal's recent past is read back from audit_log
    when it is first seen, see `unprimed`)."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.windows: dict[str, dict[str, DistinctPatients]] = {}  # organization -> principal
        self.failures: dict[tuple[str, str, str], RecentFailures] = {}
        self.primed: set[tuple[str, str]] = set()
        self.committed: dict[CaseKey, int] = {}  # -> window end
        # (organization, principal, local day's start) of after-hours cases stored: the rule
        # looks every access outside working hours up here, by the day's start as placed.
        self.nights: set[tuple[str, str, float]] = set()
        self.newest = float("-inf")

    # -- one pass over accesses

    # The hot loop: one function over the rows as they were read (an Access, or the database's
    # record of one: unpacked, not looked up by name), in which a rule that does not apply costs
    # a test or two. What a rule found is handled apart, with the row made an Access.
    def examine(  # noqa: C901
        self, accesses: Iterable[Sequence[Any]], rules_of: Callable[[str], OrgRules]
    ) -> Examination:
        found = Examination()
        rules: OrgRules | None = None
        windows_org, org_windows = "", self.windows.setdefault("", {})
        newest = self.newest
        for row in accesses:
            (
                event_id, org, at, _, action, status, principal, kind, patient, classification,
                glass, _, details,
            ) = row  # fmt: skip
            if rules is None or rules.organization_id != org:
                rules = rules_of(org)
            if at > newest:
                newest = self.newest = at
            if patient is not None:
                if rules.restricted:
                    category = rules.restricted.get(patient)
                    if category is not None and kind not in rules.restricted_exempt:
                        facts = {"category": category}
                        self._case(found, rules, RESTRICTED, Access._make(row), patient, facts)
                if rules.relations:
                    related = rules.relations.get(principal)
                    relation = related.get(patient) if related else None
                    if relation is not None:
                        facts = {"relation": relation}
                        self._case(found, rules, RELATIONSHIP, Access._make(row), patient, facts)
                volume = rules.volume
                if volume is not None and kind not in rules.volume_exempt:
                    if org != windows_org:
                        windows_org = org
                        org_windows = self.windows.setdefault(org, {})
                    window = org_windows.get(principal)
                    if window is None:
                        window = org_windows[principal] = DistinctPatients(
                            volume.window_s, volume.limit + 1
                        )
                    count = window.add(at, patient, event_id)
                    if count >= volume.baseline_min_patients or count > volume.limit:
                        usual_from, usual_until, usual = window.usual
                        if not (usual_from <= at < usual_until and count <= usual):
                            self._volume(found, rules, volume, Access._make(row), window, count)
            if glass and rules.break_glass:
                self._case(found, rules, BREAK_GLASS, Access._make(row), patient, {})
            if (
                rules.after_hours
                and classification in rules.after_hours_classes
                and kind not in rules.after_hours_exempt
            ):
                within, start, end = rules.schedule.place(at)
                if not within:
                    night_key = (org, principal, start)
                    if night_key in found.nights:
                        night = found.nights[night_key]
                    elif night_key in self.nights:  # its case is stored
                        night = found.nights[night_key] = None
                    else:
                        night = self._after_hours(found, rules, Access._make(row), start, end)
                    if night is not None:
                        night.add(event_id, at, row[3])
            failures = rules.failures
            if failures is not None and status == "failure":
                if action.startswith(failures.action_prefix):
                    self._failure(found, rules, failures, Access._make(row))
            if rules.export is not None and details is not None and rules.exported(action):
                self._export(found, rules, rules.export, Access._make(row))
        return found

    def _after_hours(
        self, found: Examination, rules: OrgRules, a: Access, start: float, end: float
    ) -> Draft | None:
        """The case of a principal's access outside working hours on a local day: its draft,
        or None when it is stored already (remembered for the examination either way)."""
        key = CaseKey(
            a.organization_id, AFTER_HOURS, a.principal_id, None, None, micros(start), micros(end)
        )
        draft = None
        if key not in self.committed:
            local = datetime.fromtimestamp(start, rules.schedule.zone).date().isoformat()
            facts = {"time_zone": rules.hours.time_zone, "local_date": local}
            draft = found.drafts[key] = Draft(key, rules.severity(AFTER_HOURS), facts)
        found.nights[(a.organization_id, a.principal_id, start)] = draft
        if draft is None:
            self.nights.add((a.organization_id, a.principal_id, start))
        return draft

    def _case(
        self,
        found: Examination,
        rules: OrgRules,
        rule: str,
        a: Access,
        patient: str | None,
        facts: dict[str, Any],
    ) -> None:
        """A case of a principal and patient for the day."""
        start, end = _day(rules, a.at)
        key = CaseKey(a.organization_id, rule, a.principal_id, patient, None, start, end)
        self._add(found, rules, key, a, facts)

    def _add(
        self, found: Examination, rules: OrgRules, key: CaseKey, a: Access, facts: dict[str, Any]
    ) -> None:
        if key in self.committed:
            return
        draft = found.drafts.get(key)
        if draft is None:
            draft = found.drafts[key] = Draft(key, rules.severity(key.rule), facts)
        draft.add(a.event_id, a.at, a.received)

    def _volume(
        self,
        found: Examination,
        rules: OrgRules,
        params: VolumeParams,
        a: Access,
        window: DistinctPatients,
        count: int,
    ) -> None:
        """A count at the baseline's floor or above the limit."""
        org, principal = a.organization_id, a.principal_id
        known, median = window.knows(a.at), window.median
        if (
            count <= params.limit
            and known
            and (median is None or count <= params.multiple * median)
        ):
            return  # the usual for this principal
        start = math.floor(a.at / params.window_s) * params.window_s
        key = CaseKey(
            org, VOLUME, principal, None, None,
            micros(start), micros(start + params.window_s),
        )  # fmt: skip
        if key in self.committed or key in found.drafts:
            return
        if count > params.limit:
            found.candidates.pop(key, None)
            self._volume_case(found, rules, key, a, count, window.evidence(), "limit", None)
        elif known:  # above the multiple of its baseline
            self._volume_case(found, rules, key, a, count, window.evidence(), "baseline", median)
        else:
            candidate = found.candidates.get(key)
            if candidate is None or count > candidate.patients:
                found.candidates[key] = Candidate(rules, a, count, window)

    def _volume_case(
        self,
        found: Examination,
        rules: OrgRules,
        key: CaseKey,
        a: Access,
        count: int,
        evidence: Evidence,
        crossed: str,
        median: float | None,
    ) -> None:
        params = rules.volume
        assert params is not None
        facts: dict[str, Any] = {
            "distinct_patients": count,
            "window_s": params.window_s,
            "limit": params.limit,
            "crossed": crossed,
        }
        if crossed == "baseline":
            facts |= {"baseline_median": median, "multiple": params.multiple}
        draft = found.drafts[key] = Draft(key, rules.severity(VOLUME), facts)
        draft.add_evidence(evidence, a.received)

    def _failure(
        self, found: Examination, rules: OrgRules, params: FailedSignInsParams, a: Access
    ) -> None:
        subjects: list[tuple[str, str | None, str | None]] = []
        if "principal" in params.by:
            subjects.append(("principal", a.principal_id, None))
        if "ip_address" in params.by and a.ip_address:
            subjects.append(("ip_address", None, a.ip_address))
        for by, principal, address in subjects:
            tracked = (a.organization_id, by, principal or address or "")
            recent = self.failures.get(tracked)
            if recent is None:
                recent = self.failures[tracked] = RecentFailures(params.window_s, params.threshold)
            run = recent.add(a.at, a.event_id)
            if run is None:
                continue
            start = math.floor(run[-1][0] / params.window_s) * params.window_s
            key = CaseKey(
                a.organization_id, FAILED_SIGN_INS, principal, None, address,
                micros(start), micros(start + params.window_s),
            )  # fmt: skip
            if key in self.committed or key in found.drafts:
                continue
            facts = {"by": by, "failures": len(run), "window_s": params.window_s}
            draft = found.drafts[key] = Draft(key, rules.severity(FAILED_SIGN_INS), facts)
            draft.add_evidence(run, a.received)

    def _export(
        self, found: Examination, rules: OrgRules, params: BulkExportParams, a: Access
    ) -> None:
        try:
            details = orjson.loads(a.details or "null")
        except orjson.JSONDecodeError:
            return
        if not isinstance(details, dict):
            return
        count = record_count(details, params.count_keys)
        if count is None or count <= params.threshold:
            return
        at = micros(a.at)
        key = CaseKey(a.organization_id, BULK_EXPORT, a.principal_id, a.patient_id, None, at, at)
        facts = {"action": a.action, "records": count, "threshold": params.threshold}
        self._add(found, rules, key, a, facts)

    # -- baselines

    def settle(self, found: Examination, baselines: Mapping[BaselineKey, float | None]) -> None:
        """Decide the volume candidates with their baselines (median distinct patients per
        window, None: too few windows to tell), and remember those baselines for the day."""
        for key, candidate in found.candidates.items():
            params = candidate.rules.volume
            median = baselines.get((key.organization_id, candidate.access.principal_id,
                                    int(candidate.access.at // DAY_S)))  # fmt: skip
            if params is not None:
                day = int(candidate.access.at // DAY_S) * DAY_S
                usual = (
                    params.limit if median is None else min(params.limit, params.multiple * median)
                )
                candidate.window.median = median
                candidate.window.usual = (day, day + DAY_S, usual)
        for key, candidate in found.candidates.items():
            a = candidate.access
            median = baselines.get((key.organization_id, a.principal_id, int(a.at // DAY_S)))
            params = candidate.rules.volume
            if params is None or median is None or key in found.drafts:
                continue
            if candidate.patients > params.multiple * median:
                self._volume_case(
                    found, candidate.rules, key, a, candidate.patients,
                    candidate.window.evidence(), "baseline", median,
                )  # fmt: skip
        found.candidates.clear()

    # -- what was stored, and what came before

    def remember(self, found: Examination) -> None:
        """The examination's cases are stored: not drafted again while their window lasts."""
        for key in found.drafts:
            self.committed[key] = key.window_end
        self.nights.update(found.nights)
        if len(self.committed) > REMEMBERED_CASES:
            now = micros(self.newest)
            self.committed = {k: end for k, end in self.committed.items() if end >= now}
        if len(self.nights) > REMEMBERED_CASES:
            self.nights = {k for k in self.nights if k[2] + DAY_S + 3600 >= self.newest}

    def unprimed(
        self, accesses: Iterable[Sequence[Any]], rules_of: Callable[[str], OrgRules]
    ) -> dict[str, tuple[set[str], float, float]]:
        """Principals first seen whose windows reach back before `started_at`: by organization,
        the principals and the span of their accesses' times."""
        wanted: dict[str, tuple[set[str], float, float]] = {}
        for row in accesses:
            a = Access._make(row)
            if a.patient_id is None and a.status != "failure":
                continue
            if (a.organization_id, a.principal_id) in self.primed:
                continue
            if a.at - rules_of(a.organization_id).reach >= self.started_at:
                continue
            principals, first, last = wanted.get(a.organization_id, (set(), a.at, a.at))
            principals.add(a.principal_id)
            wanted[a.organization_id] = (principals, min(first, a.at), max(last, a.at))
        return wanted

    def prime(
        self,
        organization_id: str,
        principals: Iterable[str],
        rules: OrgRules,
        patients: Iterable[tuple[str, float, str, Any]],
        failures: Iterable[tuple[str, float, Any, str | None]],
    ) -> None:
        """Add a principal's recent past, read back from audit_log: (principal, time, patient,
        event id) of its accesses to patients, (principal, time, event id, address) of its
        failures. Added again, an access changes nothing."""
        volume, params = rules.volume, rules.failures
        for principal in principals:
            self.primed.add((organization_id, principal))
        if volume is not None:
            windows = self.windows.setdefault(organization_id, {})
            for principal, at, patient, event_id in patients:
                window = windows.get(principal)
                if window is None:
                    window = windows[principal] = DistinctPatients(
                        volume.window_s, volume.limit + 1
                    )
                window.add(at, patient, event_id)
        if params is not None and "principal" in params.by:
            for principal, at, event_id, _ in failures:
                tracked = (organization_id, "principal", principal)
                recent = self.failures.get(tracked)
                if recent is None:
                    recent = self.failures[tracked] = RecentFailures(
                        params.window_s, params.threshold
                    )
                recent.add(at, event_id)

    def sweep(self) -> None:
        """Let go of the windows of principals and addresses idle for longer than their
        window: nothing they hold counts any more."""
        newest = self.newest
        self.windows = {
            org: {who: w for who, w in windows.items() if w.newest >= newest - w.window}
            for org, windows in self.windows.items()
        }
        self.failures = {k: f for k, f in self.failures.items() if f.newest >= newest - f.window}
        kept = {(org, who) for org, windows in self.windows.items() for who in windows}
        self.primed &= kept | {(org, who) for org, _, who in self.failures}
