"""The ingest service without HTTP: a body given as its content type, declared length and
chunks is read within its bounds, parsed, queued all or nothing and counted; refusals are
counted by their code, and a large body's slot is given back however the request ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from app.core.caller import Caller
from app.core.errors import PayloadTooLarge, UnsupportedMediaType
from app.intake.bodies import SMALL_BODY, parse_bulk
from app.intake.fhir_bodies import parse_audit_events
from app.intake.service import Ingest
from app.wiring import Resources
from tests.conftest import Service, event


async def pieces(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def never_read() -> AsyncIterator[bytes]:
    raise AssertionError("a body refused by its declared length is not read")
    yield b""  # pragma: no cover


def rejected(res: Resources, reason: str) -> float:
    return float(res.metrics.rejected.labels(reason=reason)._value.get())


def accepted(res: Resources) -> float:
    return float(res.metrics.accepted._value.get())


@pytest.fixture
def caller(org: str) -> Caller:
    return Caller("key-service-test", org, frozenset({"ingest"}))


async def test_a_body_in_chunks_is_parsed_queued_and_counted(
    service: Service, caller: Caller
) -> None:
    res: Resources = service.app.state.resources
    ingest: Ingest = res.ingest
    body = orjson.dumps([event(), event()])
    before = accepted(res)
    ids = await ingest.events(caller, None, str(len(body)), pieces(body), parse_bulk)
    assert len(ids) == 2 and len(set(ids)) == 2
    assert accepted(res) == before + 2


async def test_refusals_are_counted_by_their_code(service: Service, caller: Caller) -> None:
    res: Resources = service.app.state.resources
    too_large = str(service.settings.max_request_bytes + 1)
    with pytest.raises(PayloadTooLarge):
        await res.ingest.events(caller, None, too_large, never_read(), parse_bulk)
    assert rejected(res, "payload_too_large") == 1
    with pytest.raises(UnsupportedMediaType):
        await res.ingest.events(caller, "text/plain", None, never_read(), parse_bulk)
    with pytest.raises(UnsupportedMediaType):  # FHIR's media type is for FHIR bodies
        await res.ingest.events(caller, "application/fhir+json", None, never_read(), parse_bulk)
    assert rejected(res, "unsupported_media_type") == 2
    fhir = ("application/fhir+json", "application/json")
    with pytest.raises(PayloadTooLarge):  # read, not declared
        chunks = pieces(b"x" * (service.settings.max_request_bytes + 1), 1 << 20)
        await res.ingest.events(
            caller, "application/fhir+json", None, chunks, parse_audit_events, fhir
        )


async def test_a_large_body_gives_its_slot_back(service: Service, caller: Caller) -> None:
    res: Resources = service.app.state.resources
    body = orjson.dumps([event(details={"pad": "x" * 1000}) for _ in range(SMALL_BODY // 900)])
    assert len(body) > SMALL_BODY
    ids = await res.ingest.events(caller, None, None, pieces(body, 64 * 1024), parse_bulk)
    assert len(ids) == SMALL_BODY // 900
    assert res.large_bodies.running == 0
    declared = str(len(body))  # a length the body then goes past
    chunks = pieces(body + b"x" * service.settings.max_request_bytes, 1 << 20)
    with pytest.raises(PayloadTooLarge):
        await res.ingest.events(caller, None, declared, chunks, parse_bulk)
    assert res.large_bodies.running == 0
