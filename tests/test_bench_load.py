"""The benchmark's load, without the service: the data it posts (a population of patients and
principals, drawn with a skew; bodies completed with fresh ids and times as they are sent)."""

from __future__ import annotations

import collections
import json
from datetime import UTC, datetime, timedelta

from app.schemas import EVENT_LIST, EventIn
from loadtests.bench.payloads import MAX_AGE_S, bulk_pool, describe, single_pool
from loadtests.bench.population import PATIENTS, Population


def test_the_population_is_large_varied_and_skewed() -> None:
    events = Population(7).events(20_000)
    patients = collections.Counter(e["patient_id"] for e in events if "patient_id" in e)
    principals = collections.Counter(e["principal_id"] for e in events)
    about = sum(patients.values())

    assert len(patients) > 9_000  # a long tail: most patients appear once or twice
    hottest = sum(n for _, n in patients.most_common(PATIENTS // 100))
    assert 0.25 < hottest / about < 0.5  # and a few hot ones
    assert len(principals) > 3_000
    assert principals.most_common(1)[0][1] / len(events) < 0.1
    services = sum(1 for e in events if e["principal_type"] == "service")
    assert 0.25 < services / len(events) < 0.35
    assert 0 < sum(1 for e in events if e.get("break_glass")) < 0.005 * len(events)
    for field in ("action", "status", "data_classification", "purpose_of_use"):
        assert len({e.get(field) for e in events}) >= 3, field
    sessions = [e["session_context"] for e in events]
    assert len({s["session_id"] for s in sessions}) > 3_000
    assert len({s["ip_address"] for s in sessions}) > 3_000
    assert len({s["user_agent"] for s in sessions}) > 5
    assert len({e["correlation_id"] for e in events}) > 0.6 * len(events)
    sizes = sorted(len(json.dumps(e.get("details"))) for e in events)
    assert sizes[len(sizes) // 2] < 200 < 1_000 < sizes[-1]
    EVENT_LIST.validate_python(events, strict=False)  # every one valid as the service sees it


def test_bulk_bodies_hold_the_population_and_fresh_times() -> None:
    pool = bulk_pool(100, 20_000)
    held = describe(pool)
    assert held["bodies"] == 200 and held["events"] == 20_000
    assert held["patients"] > 9_000 and held["principals"] > 3_000

    writer = pool.writer(seed=1)
    sent = [EVENT_LIST.validate_json(writer.next_body(), strict=True) for _ in range(3)]
    now = datetime.now(UTC)
    times = [e.timestamp for events in sent for e in events if e.timestamp]
    assert len(times) == 300
    assert all(now - timedelta(seconds=MAX_AGE_S + 2) < t < now for t in times)
    assert all(e.event_id is None for events in sent for e in events)  # the service gives ids
    assert len({e.patient_id for events in sent for e in events}) > 200


def test_single_bodies_get_a_fresh_event_id_at_every_send() -> None:
    pool = single_pool(4)
    writer = pool.writer(seed=0)
    first = [EventIn.model_validate_json(writer.next_body(), strict=True) for _ in range(8)]
    assert len({e.event_id for e in first}) == 8  # each template sent twice, ids all new
    assert {e.event_id.version for e in first if e.event_id} == {7}
