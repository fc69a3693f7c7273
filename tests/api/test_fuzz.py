"""Every operation of the live OpenAPI document, fuzzed with Schemathesis (valid and invalid
requests): no 5xx, and every status code, content type and body as the document says.

The service runs with its lifespan on an event loop in its own thread, because Hypothesis drives
synchronous tests; each generated request is handed to that loop. Requests carry a key with every
scope for a throwaway organization holding a few sealed events, and path parameters sometimes
name those events, patients and principals, so success answers are judged too, not only 404s.
Generation is derandomized, so CI runs the same requests every time; AUDIT_TEST_FUZZ_EXAMPLES
asks for more of them per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis import BaseSchema, Case, CheckContext, CheckFunction, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.read.exports import CSV_COLUMNS
from app.read.models import EventOut
from tests.conftest import Service, SettingsFactory, event, running, wait_stored

T = TypeVar("T")
AnyCase = Case[Any]
BASE_URL = "http://test"
CALL_TIMEOUT_S = 30.0
MAX_URL_LENGTH = 65_536
FUZZ = settings(
    max_examples=int(os.environ.get("AUDIT_TEST_FUZZ_EXAMPLES", "100")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def verify_stream_ends_in_summary(ctx: CheckContext, response: Any, case: AnyCase) -> bool | None:
    """The 200 goes out before verification runs, so a failure can only be told in the stream:
    one-key lines (progress, finding), ending in the summary, never an `error` line."""
    if response.status_code != 200:
        return None
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    kinds = [key for line in lines for key in line]
    assert len(kinds) == len(lines), "every line is an object with one key"
    assert set(kinds[:-1]) <= {"progress", "finding"}, kinds
    assert kinds[-1:] == ["summary"], kinds
    return None


def export_parses(ctx: CheckContext, response: Any, case: AnyCase) -> bool | None:
    """An export is judged by its format: NDJSON lines are events as the API shows them, CSV rows
    have the documented columns, FHIR is one Bundle of AuditEvents."""
    if response.status_code != 200:
        return None
    media_type = response.headers["content-type"][0].split(";")[0]
    body = response.content
    if media_type == "application/x-ndjson":
        try:
            for line in body.splitlines():
                EventOut.model_validate_json(line)
        except ValidationError as exc:
            raise AssertionError(f"an NDJSON line is not an event: {exc}") from None
    elif media_type == "text/csv":
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert rows[0] == list(CSV_COLUMNS), rows[0]
        assert all(len(row) == len(CSV_COLUMNS) for row in rows), "ragged CSV rows"
    else:
        bundle = orjson.loads(body)
        assert bundle["resourceType"] == "Bundle", bundle
        kinds = {entry["resource"]["resourceType"] for entry in bundle.get("entry", [])}
        assert kinds <= {"AuditEvent"}, kinds
    return None


# Every operation, with the checks it needs beyond CHECKS.
OPERATIONS: dict[str, list[CheckFunction]] = {
    "POST /events": [],
    "POST /events/bulk": [],
    "POST /fhir/AuditEvent": [],
    "GET /events": [],
    "GET /events/export": [export_parses],
    "GET /events/{event_id}": [],
    "GET /events/{event_id}/proof": [],
    "GET /phi-access/patients/{patient_id}": [],
    "GET /phi-access/principals/{principal_id}": [],
    "GET /integrity/verify": [verify_stream_ends_in_summary],
    "GET /operator/integrity/verify": [verify_stream_ends_in_summary],
    "GET /log/{chain}/consistency": [],
    "GET /log/{chain}/tile/{tile_path}": [],
    "GET /log/{chain}/checkpoint": [],
    "GET /queue/stats": [],
    "GET /operator/queue/stats": [],
    "GET /queue/dead-letter": [],
    "DELETE /queue/dead-letter": [],
    "POST /queue/dead-letter/replay": [],
    "GET /healthz": [],
    "GET /readyz": [],
}


@dataclass
class Fuzzed:
    """The running service, the caller's headers, and values that name seeded records."""

    loop: asyncio.AbstractEventLoop
    service: Service
    headers: dict[str, str]
    known: dict[str, list[str]]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the service's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    def send(self, case: AnyCase) -> httpx.Response:
        """Send exactly the bytes Schemathesis serialized, through the service's client."""
        kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=self.headers)
        prepared = requests.Request(**kwargs).prepare()
        assert prepared.method is not None and prepared.url is not None
        # Long lists in a query string can outgrow what any client sends (httpx refuses a URL
        # over 64 KiB): such a request never reaches a server.
        assume(len(prepared.url) <= MAX_URL_LENGTH)
        assert prepared.body is None or isinstance(prepared.body, bytes | str)
        headers = {
            name: value.decode("latin-1") if isinstance(value, bytes) else value
            for name, value in prepared.headers.items()
        }
        request = self.service.client.request(
            prepared.method, prepared.url, headers=headers, content=prepared.body
        )
        return self.run(request)


async def _seed(service: Service, org: str, database_url: str) -> tuple[dict[str, str], Any]:
    headers = await service.key(org)
    events = [
        event(
            principal_id=f"dr-{i % 2}",
            patient_id=f"patient-{i % 3}",
            data_classification="PHI",
            break_glass=i == 0,
            session_context={"session_id": f"s-{i}", "ip_address": "10.0.0.1"},
            details={"query": {"n": i}},
        )
        for i in range(6)
    ]
    response = await service.client.post("/events/bulk", json=events, headers=headers)
    assert response.status_code == 202, response.text
    await wait_stored(database_url, org, len(events))
    return headers, response.json()["event_ids"]


@contextlib.contextmanager
def serving(settings: Settings, org: str, database_url: str) -> Iterator[Fuzzed]:
    """The service with its lifespan in one task on a loop thread, until the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-service")
    thread.start()
    ready: Future[Fuzzed] = Future()
    stop = asyncio.Event()

    async def lifetime() -> None:
        async with running(settings) as service:
            headers, event_ids = await _seed(service, org, database_url)
            known = {
                "event_id": event_ids,
                "patient_id": ["patient-0", "patient-1"],
                "principal_id": ["dr-0", "dr-1"],
            }
            ready.set_result(Fuzzed(loop, service, headers, known))
            await stop.wait()

    served = asyncio.run_coroutine_threadsafe(lifetime(), loop)
    try:
        either: list[Future[Any]] = [ready, served]
        wait(either, CALL_TIMEOUT_S, FIRST_COMPLETED)
        if served.done():
            served.result()
        yield ready.result(0)
    finally:
        loop.call_soon_threadsafe(stop.set)
        try:
            served.result(CALL_TIMEOUT_S)
        finally:
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


@pytest.fixture
def fuzzed(settings_factory: SettingsFactory, org: str, database_url: str) -> Iterator[Fuzzed]:
    with serving(settings_factory(), org, database_url) as live:
        yield live


@pytest.fixture
def live_schema(fuzzed: Fuzzed) -> BaseSchema:
    response = fuzzed.run(fuzzed.service.client.get("/openapi.json"))
    assert response.status_code == 200
    return schemathesis.openapi.from_dict(response.json())


def test_every_operation_is_fuzzed(live_schema: BaseSchema) -> None:
    labels = {
        live_schema[path][method].label for path in live_schema for method in live_schema[path]
    }
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms(label: str, fuzzed: Fuzzed, live_schema: BaseSchema) -> None:
    method, path = label.split(" ", 1)
    operation = live_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @FUZZ
    @given(case=cases, data=st.data())
    def conforms(case: AnyCase, data: st.DataObject) -> None:
        for name, values in fuzzed.known.items():
            if name in case.path_parameters and data.draw(st.booleans(), label=f"known {name}"):
                case.path_parameters[name] = data.draw(st.sampled_from(values), label=name)
        response = fuzzed.send(case)
        case.validate_response(response, checks=CHECKS, additional_checks=OPERATIONS[label])

    conforms()


async def test_ndjson_export_with_two_values_of_a_filter(
    service: Service, org: str, database_url: str
) -> None:
    """Found by the fuzzer: repeated filter values (an IN list) in the NDJSON export."""
    headers = await service.key(org)
    sent = [event(status="success"), event(status="failure"), event(status="attempt")]
    await service.client.post("/events/bulk", json=sent, headers=headers)
    await wait_stored(database_url, org, 3)
    params = {"status": ["success", "failure"], "action": ["fhir.patient.read", "x.y"]}
    response = await service.client.get("/events/export", params=params, headers=headers)
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert sorted(x["status"] for x in lines) == ["failure", "success"]


async def test_a_body_that_is_not_text_is_refused_like_invalid_json(
    service: Service, org: str
) -> None:
    headers = {**await service.key(org), "content-type": "application/json"}
    response = await service.client.post(
        "/queue/dead-letter/replay", content=b'{"ids": ["\xff"]}', headers=headers
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert [d["type"] for d in error["details"]] == ["json_invalid"]


async def test_not_ready_answers_as_documented(settings_factory: SettingsFactory) -> None:
    """No writer runs, so /readyz answers 503, as documented; only not_a_server_error is left
    out, since this 503 is the answer asked for."""
    async with running(settings_factory(run_writers=False)) as service:
        document = (await service.client.get("/openapi.json")).json()
        response = await service.client.get("/readyz")
    assert response.status_code == 503
    case = schemathesis.openapi.from_dict(document)["/readyz"]["GET"].Case()
    case.validate_response(response, checks=CHECKS, excluded_checks=[not_a_server_error])
