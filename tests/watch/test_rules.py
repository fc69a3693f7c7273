"""The rules as pure functions over accesses: each fires on its planted case, with its subject,
window and events, and stays quiet on the cases next to it."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest

from app.watch.cases import Access, CaseKey, Draft, alert_id, micros, raised_event_id
from app.watch.evaluate import Examination, Examiner, OrgRules, action_matcher, like_pattern
from app.watch.rules import RuleSetting, rule_setting
from app.watch.windows import DistinctPatients, RecentFailures

ORG = "org-a"
WEDNESDAY = datetime(2026, 12, 2, tzinfo=UTC)  # days below are UTC days unless a zone is set
AT_10 = WEDNESDAY + timedelta(hours=10)


def access(
    principal: str = "dr.x",
    patient: str | None = "p1",
    at: datetime = AT_10,
    **fields: Any,
) -> Access:
    values: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "organization_id": ORG,
        "at": at.timestamp(),
        "received": at.timestamp() + 0.05,
        "action": "fhir.patient.read",
        "status": "success",
        "principal_id": principal,
        "principal_type": "user",
        "patient_id": patient,
        "classification": "PHI" if patient else "INTERNAL",
        "break_glass": False,
        "ip_address": None,
        "details": None,
    }
    values.update(fields)
    return Access(**values)


def rules(
    *settings: RuleSetting,
    restricted: dict[str, str] | None = None,
    relations: dict[str, dict[str, str]] | None = None,
) -> OrgRules:
    return OrgRules(ORG, {s.rule: s for s in settings}, restricted or {}, relations or {})


def only(rule: str, **params: Any) -> list[RuleSetting]:
    """Every rule off but `rule` (with `params`)."""
    from app.watch.rules import RULES

    return [
        rule_setting(name, enabled=name == rule, params=params if name == rule else None)
        for name in RULES
    ]


def examine(org_rules: OrgRules, accesses: Sequence[Access]) -> Examination:
    return Examiner(started_at=0).examine(accesses, lambda _: org_rules)


def cases(found: Examination) -> list[tuple[str, str, int]]:
    """(rule, subject, events) of each case, in the order found."""
    return [(k.rule, k.subject, d.events) for k, d in found.drafts.items()]


def day(on: date) -> tuple[int, int]:
    start = datetime(on.year, on.month, on.day, tzinfo=UTC)
    return micros(start.timestamp()), micros((start + timedelta(days=1)).timestamp())


# -- the restricted list and relationships


@pytest.mark.parametrize(
    ("accesses", "expected"),
    [
        ([access(patient="p-vip")], [("restricted", "principal dr.x, patient p-vip", 1)]),
        (  # two accesses the same day are one case; the next day is another
            [
                access(patient="p-vip"),
                access(patient="p-vip", at=AT_10 + timedelta(hours=3)),
                access(patient="p-vip", at=AT_10 + timedelta(days=1)),
            ],
            [
                ("restricted", "principal dr.x, patient p-vip", 2),
                ("restricted", "principal dr.x, patient p-vip", 1),
            ],
        ),
        ([access(patient="p-2")], []),
        ([access(patient="p-vip", principal_type="service")], []),  # an interface engine
        ([access(patient=None)], []),
    ],
)
def test_restricted_patients(accesses: list[Access], expected: list[tuple[str, str, int]]) -> None:
    found = examine(rules(*only("restricted"), restricted={"p-vip": "vip"}), accesses)
    assert cases(found) == expected
    for key, draft in found.drafts.items():
        assert draft.facts == {"category": "vip"}
        assert (key.window_start, key.window_end) == day(
            datetime.fromtimestamp(draft.first_at, UTC).date()
        )


def test_a_restricted_rule_turned_off_is_quiet() -> None:
    off = [rule_setting("restricted", enabled=False)]
    assert (
        cases(examine(rules(*off, restricted={"p1": "vip"}), [access()]))
        == [
            # only the rules left on by default that this access trips: none
        ]
    )


@pytest.mark.parametrize(
    ("principal", "patient", "expected"),
    [
        ("nurse.kim", "p-kim", [("relationship", "principal nurse.kim, patient p-kim", 1)]),
        (
            "nurse.kim",
            "p-kims-son",
            [("relationship", "principal nurse.kim, patient p-kims-son", 1)],
        ),
        ("nurse.kim", "p-other", []),
        ("dr.x", "p-kim", []),  # the pair, not the patient, is listed
    ],
)
def test_relationships(principal: str, patient: str, expected: list[tuple[str, str, int]]) -> None:
    pairs = {"nurse.kim": {"p-kim": "self", "p-kims-son": "relative"}}
    found = examine(rules(*only("relationship"), relations=pairs), [access(principal, patient)])
    assert cases(found) == expected


# -- after hours


@pytest.mark.parametrize(
    ("at", "fields", "params", "expected_day"),
    [
        (AT_10, {}, {}, None),  # Wednesday 10:00 UTC
        (WEDNESDAY + timedelta(hours=22), {}, {}, "2026-12-02"),
        (WEDNESDAY + timedelta(hours=6, minutes=59), {}, {}, "2026-12-02"),
        (WEDNESDAY + timedelta(days=3, hours=10), {}, {}, "2026-12-05"),  # a Saturday
        (AT_10, {}, {"holidays": ["2026-12-02"]}, "2026-12-02"),
        (WEDNESDAY + timedelta(hours=22), {"principal_type": "service"}, {}, None),
        (WEDNESDAY + timedelta(hours=22), {"patient": None}, {}, None),  # no PHI
        (  # 10:00 UTC is 04:00 in Chicago, still Wednesday there
            AT_10,
            {},
            {"time_zone": "America/Chicago"},
            "2026-12-02",
        ),
        (  # 02:00 UTC Thursday is Wednesday 20:00 in Chicago: Wednesday's case
            WEDNESDAY + timedelta(days=1, hours=2),
            {},
            {"time_zone": "America/Chicago"},
            "2026-12-02",
        ),
        (  # service accounts too, when they are not exempt
            WEDNESDAY + timedelta(hours=22),
            {"principal_type": "service"},
            {"exempt_principal_types": []},
            "2026-12-02",
        ),
    ],
)
def test_after_hours(
    at: datetime, fields: dict[str, Any], params: dict[str, Any], expected_day: str | None
) -> None:
    patient = fields.pop("patient", "p1")
    found = examine(
        rules(*only("after_hours", **params)), [access(patient=patient, at=at, **fields)]
    )
    if expected_day is None:
        assert cases(found) == []
        return
    assert cases(found) == [("after_hours", "principal dr.x", 1)]
    (draft,) = found.drafts.values()
    assert draft.facts["local_date"] == expected_day
    assert draft.facts["time_zone"] == params.get("time_zone", "UTC")


def test_a_night_of_access_is_one_case_per_person() -> None:
    night = [
        access(patient=f"p{i}", at=WEDNESDAY + timedelta(hours=20, minutes=i)) for i in range(30)
    ]
    night.append(access("nurse.lee", at=WEDNESDAY + timedelta(hours=23)))
    found = examine(rules(*only("after_hours")), night)
    assert cases(found) == [
        ("after_hours", "principal dr.x", 30),
        ("after_hours", "principal nurse.lee", 1),
    ]


# -- volume


def test_volume_over_the_limit_is_one_case_naming_a_patients_access_each() -> None:
    accesses = [access(patient=f"p{i}", at=AT_10 + timedelta(minutes=5 * i)) for i in range(6)]
    accesses += [access(patient="p0", at=AT_10 + timedelta(minutes=31 + i)) for i in range(5)]
    found = examine(rules(*only("volume", limit=5)), accesses)
    assert cases(found) == [("volume", "principal dr.x", 6)]
    (key, draft) = next(iter(found.drafts.items()))
    assert set(draft.event_ids) == {a.event_id for a in accesses[:6]}
    assert draft.facts == {"distinct_patients": 6, "window_s": 3600, "limit": 5, "crossed": "limit"}
    hour = micros(AT_10.timestamp())
    assert (key.window_start, key.window_end) == (hour, hour + 3600 * 1_000_000)


@pytest.mark.parametrize(
    ("accesses", "params"),
    [
        ([access(patient="p1") for _ in range(20)], {"limit": 5}),  # one patient, many times
        (  # six patients, but over more than an hour
            [access(patient=f"p{i}", at=AT_10 + timedelta(minutes=13 * i)) for i in range(6)],
            {"limit": 5},
        ),
        (
            [access(patient=f"p{i}", principal_type="service") for i in range(6)],
            {"limit": 5},
        ),
        ([access(patient=f"p{i}") for i in range(6)], {"limit": 6}),
    ],
)
def test_volume_stays_quiet(accesses: list[Access], params: dict[str, Any]) -> None:
    assert cases(examine(rules(*only("volume", **params)), accesses)) == []


def test_volume_above_a_multiple_of_the_principals_baseline() -> None:
    settings = only("volume", limit=100, baseline_min_patients=10, multiple=5)
    org_rules = rules(*settings)
    accesses = [access(patient=f"p{i}", at=AT_10 + timedelta(seconds=i)) for i in range(12)]
    examiner = Examiner(started_at=0)
    found = examiner.examine(accesses, lambda _: org_rules)
    assert found.drafts == {}
    day_number = int(AT_10.timestamp() // 86_400)
    assert found.baselines_wanted() == {ORG: {("dr.x", day_number)}}
    examiner.settle(found, {(ORG, "dr.x", day_number): 2.0})  # 12 > 5 x 2
    assert cases(found) == [("volume", "principal dr.x", 12)]
    (draft,) = found.drafts.values()
    assert draft.facts["crossed"] == "baseline" and draft.facts["baseline_median"] == 2.0
    # The baseline is known now for the day: a later count is decided at once.
    later = [access(patient=f"q{i}", at=AT_10 + timedelta(hours=2, seconds=i)) for i in range(11)]
    again = examiner.examine(later, lambda _: org_rules)
    assert cases(again) == [("volume", "principal dr.x", 11)] and not again.candidates


@pytest.mark.parametrize("median", [None, 3.0])  # too new to have one; 12 is not above 5 x 3
def test_volume_under_the_baseline_or_without_one_is_quiet(median: float | None) -> None:
    org_rules = rules(*only("volume", limit=100, baseline_min_patients=10, multiple=5))
    examiner = Examiner(started_at=0)
    accesses = [access(patient=f"p{i}", at=AT_10 + timedelta(seconds=i)) for i in range(12)]
    found = examiner.examine(accesses, lambda _: org_rules)
    examiner.settle(found, {(ORG, "dr.x", int(AT_10.timestamp() // 86_400)): median})
    assert found.drafts == {}


# -- break-glass, failed sign-ins, bulk export


def test_every_break_glass_access_opens_a_case() -> None:
    accesses = [
        access(patient="p1", break_glass=True),
        access(patient="p1", break_glass=True, action="fhir.observation.read"),
        access(patient="p2", break_glass=True),
        access(patient="p3"),
    ]
    assert cases(examine(rules(*only("break_glass")), accesses)) == [
        ("break_glass", "principal dr.x, patient p1", 2),
        ("break_glass", "principal dr.x, patient p2", 1),
    ]


def sign_in_failure(minute: float, principal: str = "dr.x", address: str = "10.9.9.9") -> Access:
    return access(
        principal,
        None,
        AT_10 + timedelta(minutes=minute),
        action="auth.login",
        status="failure",
        ip_address=address,
    )


@pytest.mark.parametrize(
    ("accesses", "expected"),
    [
        (
            [sign_in_failure(m) for m in range(5)],
            [
                ("failed_sign_ins", "principal dr.x", 5),
                ("failed_sign_ins", "address 10.9.9.9", 5),
            ],
        ),
        (  # five people failing from one address
            [sign_in_failure(m, principal=f"u{m}") for m in range(5)],
            [("failed_sign_ins", "address 10.9.9.9", 5)],
        ),
        ([sign_in_failure(m) for m in range(4)], []),
        ([sign_in_failure(m * 4) for m in range(5)], []),  # 16 minutes apart end to end
        (
            [
                access(
                    patient=None,
                    action="fhir.patient.read",
                    status="failure",
                    ip_address="10.9.9.9",
                )
                for _ in range(5)
            ],
            [],
        ),
    ],
)
def test_failed_sign_ins(accesses: list[Access], expected: list[tuple[str, str, int]]) -> None:
    assert cases(examine(rules(*only("failed_sign_ins")), accesses)) == expected


def export(count: Any, action: str = "phi.export.download", key: str = "resources") -> Access:
    details = orjson.dumps({key: count, "format": "ndjson"}).decode()
    return access(action=action, details=details)


@pytest.mark.parametrize(
    ("accesses", "expected"),
    [
        ([export(["Patient/1"] * 1500)], [("bulk_export", "principal dr.x, patient p1", 1)]),
        (
            [export(5000, action="fhir.observation.search", key="results")],
            [("bulk_export", "principal dr.x, patient p1", 1)],
        ),
        (
            [export(2000, action="report.run", key="record_count")],
            [("bulk_export", "principal dr.x, patient p1", 1)],
        ),
        ([export(["Patient/1"] * 500)], []),
        ([export(5000, action="fhir.patient.read", key="records")], []),  # not an export
        ([export("5000", key="records")], []),  # not a count
        ([export(True, key="count")], []),
        ([access(action="phi.export.download", details="{not json")], []),
    ],
)
def test_bulk_export(accesses: list[Access], expected: list[tuple[str, str, int]]) -> None:
    found = examine(rules(*only("bulk_export")), accesses)
    assert cases(found) == expected


def test_action_patterns_in_python_and_in_sql() -> None:
    matcher = action_matcher(["*export*", "*.search", "report.*"])
    assert matcher.match("phi.export.download") and matcher.match("fhir.bulk.export")
    assert matcher.match("fhir.observation.search") and matcher.match("report.run")
    assert not matcher.match("fhir.observation.searchable") and not matcher.match("xreport.run")
    assert like_pattern("*.search") == "%.search"
    assert like_pattern("ehr_chart.*") == "ehr\\_chart.%"


# -- the same case, however it is found


def test_an_alert_id_is_uuid5_of_the_cases_key() -> None:
    """A golden vector: uuid5 (SHA-1 of the namespace's bytes and the name, version 5, RFC
    variant) of the key as a compact JSON array, in the namespace app.watch.cases.ALERTS."""
    key = CaseKey(
        "org-a", "volume", "dr.x", None, None, 1_796_205_600_000_000, 1_796_209_200_000_000
    )
    name = b'["org-a","volume","dr.x",null,null,1796205600000000,1796209200000000]'
    digest = hashlib.sha1(uuid.UUID("1c6c4f0e-7a52-5b8e-9d3a-5a7e0c2f4b61").bytes + name).digest()
    assert digest[:16].hex() == "f0037e54515b9734c8fea556ff663ce4"
    assert str(alert_id(key)) == "f0037e54-515b-5734-88fe-a556ff663ce4"
    assert str(raised_event_id(alert_id(key))) == "b1dc7e2a-bcda-58fd-9cd8-25b47be3b6d5"
    assert key.subject == "principal dr.x"


def test_two_examiners_find_the_same_cases_and_a_retried_examination_counts_nothing_twice() -> None:
    org_rules = rules(restricted={"p-vip": "vip"})
    accesses = [access(patient=f"p{i}", at=AT_10 + timedelta(seconds=i)) for i in range(101)]
    accesses += [access(patient="p-vip", at=WEDNESDAY + timedelta(hours=21), break_glass=True)]
    first = Examiner(0).examine(accesses, lambda _: org_rules)
    second = Examiner(0)
    second.examine(accesses[:50], lambda _: org_rules)
    retried = second.examine(accesses, lambda _: org_rules)  # the first 50 again
    ids = {k.alert_id() for k in first.drafts}
    assert ids == {k.alert_id() for k in retried.drafts}
    assert sorted(k.rule for k in first.drafts) == [
        "after_hours",
        "break_glass",
        "restricted",
        "volume",
    ]
    volume = next(d for k, d in retried.drafts.items() if k.rule == "volume")
    assert volume.facts["distinct_patients"] == 101


def test_cases_stored_are_not_drafted_again_in_their_window() -> None:
    org_rules = rules(*only("break_glass"))
    examiner = Examiner(0)
    found = examiner.examine([access(break_glass=True)], lambda _: org_rules)
    examiner.remember(found)
    assert examiner.examine([access(break_glass=True)], lambda _: org_rules).drafts == {}


def test_the_windows_hold_what_counts_and_no_more() -> None:
    window = DistinctPatients(window=60, cap=2)
    ids = [uuid.uuid4() for _ in range(9)]
    counts = [window.add(t, p, e) for t, p, e in zip([0, 1, 2, 3], "abca", ids, strict=False)]
    assert counts == [1, 2, 3, 3]  # past the cap: known to be past it
    assert window.add(4, "d", ids[4]) == 4
    assert window.add(5, "e", ids[5]) == 2  # past twice the cap: the newest two are kept
    assert [at for at, _ in window.evidence()] == [4, 5]
    assert window.add(70, "f", ids[6]) == 1  # the others are older than a minute
    assert window.add(5, "g", ids[7]) == 1  # too late to count
    assert window.add(70, "f", ids[6]) == 1  # the same access again
    failures = RecentFailures(window=60, threshold=3)
    assert failures.add(0, ids[0]) is None and failures.add(30, ids[1]) is None
    assert failures.add(30, ids[1]) is None  # the same failure again
    assert failures.add(61, ids[2]) is None  # 0..61: not within a minute
    run = failures.add(62, ids[3])
    assert run is not None and [at for at, _ in run] == [30, 61, 62]
    assert failures.add(61, ids[2]) == run  # examined again: the same run
    assert failures.add(0, ids[0]) is None  # no longer in it


def test_a_draft_is_the_row_stored() -> None:
    key = CaseKey(ORG, "break_glass", "dr.x", "p1", None, *day(date(2026, 12, 2)))
    draft = Draft(key, "medium", {})
    one = access(break_glass=True)
    draft.add(one.event_id, one.at, one.received)
    row = draft.row()
    assert row["alert_id"] == str(alert_id(key)) and row["subject"] == "principal dr.x, patient p1"
    assert row["window_start"] == "2026-12-02T00:00:00.000000Z"
    assert row["window_end"] == "2026-12-03T00:00:00.000000Z"
    assert row["event_ids"] == [str(one.event_id)]
    assert row["details"] == {
        "events": 1,
        "first_at": "2026-12-02T10:00:00.000000Z",
        "last_at": "2026-12-02T10:00:00.000000Z",
    }
