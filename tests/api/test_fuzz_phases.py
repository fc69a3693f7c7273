"""Schemathesis's examples and coverage phases, through its CLI, against the service as a real
HTTP server: no 5xx, and every status code, content type and body as the document says.

test_fuzz.py drives random generation in-process; these two phases need Schemathesis's runner,
and its pytest plugin breaks on pytest 9.2, so `schemathesis run` runs as a subprocess against
`python -m app serve` on a free loopback port, with a database and a stream prefix of its own
holding a few sealed events. Examples: the document declares no examples, so `fill-missing`
builds each operation's cases from its schema defaults, generated values and values seen in
earlier responses. Coverage: boundary and wrong-type values of every parameter and body field,
plus the methods no path declares. Generation is deterministic and the server starts empty but
for the same seeded events, so every run sends the same kinds of requests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.apikeys.keys import ALL_SCOPES, create_api_key
from app.cli.migrate import migrate
from app.core.config import Settings
from app.core.db import engine_scope
from app.local.servers import free_port
from tests.api.test_fuzz import OPERATIONS
from tests.conftest import event, key_row_mac, make_settings, wait_stored, with_database
from tests.served import serving

PHASES = ("examples", "coverage")
# The four checks test_fuzz.py runs on every operation, and only those.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# Without fill-missing the examples phase skips every operation: the document declares no
# examples, only defaults.
CONFIG = "[phases.examples]\nfill-missing = true\n"
# The run takes about 15 s on two cores; this only bounds a hang.
RUN_TIMEOUT_S = 150.0  # a bound for a loaded host; the run takes 30-50 s
SEEDED_EVENTS = 6
SHOWN_CHARS = 12_000


@dataclass
class Live:
    url: str
    key: str
    log: Path


@dataclass
class Phase:
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    failed: int = 0
    errored: int = 0

    def line(self, name: str) -> str:
        return (
            f"{name}: {len(self.operations)} operations, {self.cases} test cases, "
            f"{self.failed} failed, {self.errored} errored"
        )


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def own_database(server_url: str) -> Iterator[str]:
    """A migrated database for this test alone: what the run sees (the ledger, the events its
    requests can name) does not depend on which other tests ran before it."""
    name = f"audit_phases_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(server_url, name)
    try:
        migrate(Settings(database_url=url, _env_file=None))
        yield url
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _new_key(settings: Settings, org: str) -> str:
    async with engine_scope(settings) as engine:
        _, key = await create_api_key(
            engine, org, list(ALL_SCOPES), "schemathesis", key_row_mac(settings)
        )
    return key


@pytest.fixture
def live(own_database: str, redis_url: str, org: str, tmp_path: Path) -> Iterator[Live]:
    """`python -m app serve` on a free port, a key with every scope, and sealed events."""
    settings = make_settings(own_database, redis_url, port=free_port(), log_level="WARNING")
    log = tmp_path / "serve.log"
    # /readyz: the writers run, so no answer of the run is a 503.
    with serving(settings, log, ready="/readyz", cwd=tmp_path) as server:
        key = asyncio.run(_new_key(settings, org))
        events = [
            event(
                principal_id=f"dr-{i % 2}",
                patient_id=f"patient-{i % 3}",
                data_classification="PHI",
                session_context={"session_id": f"s-{i}", "ip_address": "10.0.0.1"},
            )
            for i in range(SEEDED_EVENTS)
        ]
        headers = {"Authorization": f"Bearer {key}"}
        response = httpx.post(f"{server.url}/events/bulk", json=events, headers=headers, timeout=10)
        assert response.status_code == 202, response.text
        asyncio.run(wait_stored(own_database, org, SEEDED_EVENTS))
        yield Live(server.url, key, log)


def _phases(ndjson: Path) -> dict[str, Phase]:
    """Operations, test cases and failed or errored cases of each phase, from the event log."""
    phases = {name: Phase() for name in PHASES}
    with ndjson.open("rb") as lines:
        for line in lines:
            if not line.startswith(b'{"ScenarioFinished"'):
                continue
            scenario: dict[str, Any] = orjson.loads(line)["ScenarioFinished"]
            phase = phases.setdefault(scenario["phase"], Phase())
            recorder = scenario["recorder"]
            phase.operations.add(recorder["label"])
            phase.cases += len(recorder["cases"])
            phase.errored += scenario["status"] == "error"
            statuses = [{c["status"] for c in checks} for checks in recorder["checks"].values()]
            phase.failed += sum("failure" in s for s in statuses)
    return phases


def _findings(output: str) -> str:
    """The CLI's failures, errors and summary (each failure with a curl to reproduce it)."""
    start = min(
        (i for i in (output.find("==== FAILURES"), output.find("==== ERRORS")) if i >= 0),
        default=output.find("==== SUMMARY"),
    )
    shown = output[output.rfind("\n", 0, max(start, 0)) + 1 :]
    if len(shown) > SHOWN_CHARS:
        shown = shown[: SHOWN_CHARS // 2] + "\n[...]\n" + shown[-SHOWN_CHARS // 2 :]
    return shown


def test_examples_and_coverage_phases_conform(live: Live, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    reports = tmp_path / "report"
    argv = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"),
        f"{live.url}/openapi.json",
        *("--phases", ",".join(PHASES)),
        *("--checks", ",".join(CHECKS)),
        *("--header", f"Authorization: Bearer {live.key}"),
        "--generation-deterministic",  # also: no example database
        # One worker: on CPython 3.11.7, Hypothesis describing a filter lambda runs ast.parse,
        # which raises a spurious SystemError ("AST constructor recursion depth mismatch",
        # CPython gh-106905) when two threads parse at once; it is not the service's error.
        *("--workers", "1"),
        "--continue-on-failure",
        *("--request-timeout", "10"),
        "--no-color",
        *("--report", "json,ndjson", "--report-dir", str(reports)),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    started = time.monotonic()
    run = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    elapsed = time.monotonic() - started
    report_files = sorted(reports.glob("*.json"))
    assert report_files, f"no report (exit {run.returncode}):\n{run.stdout}\n{run.stderr}"
    report = orjson.loads(report_files[-1].read_bytes())
    phases = _phases(next(reports.glob("*.ndjson")))
    summary = "\n".join(
        [*(phases[name].line(name) for name in PHASES), f"exit {run.returncode}, {elapsed:.1f} s"]
    )
    print(summary)
    if run.returncode != 0 or report["failures"] or report["errors"]:
        pytest.fail(
            f"{summary}\n\n{_findings(run.stdout)}\n{run.stderr[-2_000:]}\n"
            f"--- server log ---\n{live.log.read_text(errors='replace')[-3_000:]}",
            pytrace=False,
        )
    for name in PHASES:
        assert report["phases"][name]["status"] == "success", (name, report["phases"][name])
        assert phases[name].operations == set(OPERATIONS), (name, summary)
