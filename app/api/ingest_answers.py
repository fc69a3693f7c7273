"""The answers of the ingest routes (POST /events, /events/bulk, /fhir/AuditEvent): the ingest
service called with the request's body, and its 202. The routes and the fast path
(app.api.fastpath) both answer with these; the OpenAPI description of the bodies, read raw
(one validating parse), is here too."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.core.caller import Caller
from app.events.model import EventIn
from app.intake.bodies import Limits, parse_bulk, parse_event
from app.intake.fhir_bodies import parse_audit_events
from app.intake.service import JSON, Ingest, Parser

FHIR_JSON = ("application/fhir+json", "application/json")

EVENT_REF = {"$ref": "#/components/schemas/EventIn"}


async def _ingest(
    ingest: Ingest,
    request: Request,
    caller: Caller,
    parse: Parser,
    media_types: tuple[str, ...] = JSON,
) -> list[str]:
    headers = request.headers
    return await ingest.events(
        caller,
        headers.get("content-type"),
        headers.get("content-length"),
        request.stream(),
        parse,
        media_types,
    )


def _one_event(body: bytes, limits: Limits) -> list[EventIn]:
    return [parse_event(body, limits)]


async def event_answer(ingest: Ingest, request: Request, caller: Caller) -> Response:
    ids = await _ingest(ingest, request, caller, _one_event)
    return Response(orjson.dumps({"event_id": ids[0]}), 202, media_type="application/json")


async def bulk_answer(ingest: Ingest, request: Request, caller: Caller) -> Response:
    ids = await _ingest(ingest, request, caller, parse_bulk)
    body = orjson.dumps({"accepted": len(ids), "event_ids": ids})
    return Response(body, 202, media_type="application/json")


async def fhir_answer(ingest: Ingest, request: Request, caller: Caller) -> Response:
    """Each AuditEvent becomes one event; the answer is bulk's, in the resources' order."""
    ids = await _ingest(ingest, request, caller, parse_audit_events, FHIR_JSON)
    body = orjson.dumps({"accepted": len(ids), "event_ids": ids})
    return Response(body, 202, media_type="application/json")


def request_body(schema: dict[str, Any], media_types: tuple[str, ...] = JSON) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a raw-body ingest route."""
    content = {media: {"schema": schema} for media in media_types}
    return {"requestBody": {"required": True, "content": content}}


def event_component_schemas() -> dict[str, Any]:
    """EventIn and the models it refers to, for the OpenAPI document's components."""
    schema = EventIn.model_json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = schema.pop("$defs", {})
    components["EventIn"] = schema
    return components
