"""The fault-injection harness (loadtests/faults), short version, on most scenarios: writers
killed mid-batch, an API killed with requests open, PostgreSQL down under load, Redis SIGKILLed
and restarted, poison events and conflicting resends, SIGTERM to everything with batches in
flight, and two APIs and two workers on a real 3-master Redis Cluster with three stream shards
(three chains). Every fault must land; every id answered 202 is stored exactly once with the
content sent (or dead-lettered, when it was meant to be) and every chain verifies. `make faults`
runs every scenario at full length."""

from __future__ import annotations

import pytest

from loadtests.faults.checks import table
from loadtests.faults.scenarios import run_scenarios
from loadtests.faults.servers import missing_tools

CI_SCENARIOS = [
    "writer-kill",
    "api-kill",
    "pg-outage",
    "redis-always",
    "poison",
    "sigterm",
    "redis-cluster",
]
MISSING = missing_tools()


@pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")
async def test_faults_lose_and_duplicate_nothing() -> None:
    outcomes = await run_scenarios(CI_SCENARIOS, short=True)
    report = table(outcomes)
    print(report)
    assert [o.scenario for o in outcomes] == CI_SCENARIOS
    for outcome in outcomes:
        assert outcome.lost == 0, report
        assert outcome.duplicated == 0, report
        assert outcome.verified, report
        assert outcome.passed, report
