"""One error shape for every failure: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.api.schemas import ErrorResponse
from app.core.errors import ApiError
from app.http.errors import DEPENDENCY_ERRORS, dependency_unavailable
from app.http.event_data import EVENT_DATA_HEADERS
from app.intake.problems import describe_validation_errors

log = logging.getLogger(__name__)


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The one error shape. Every error answer says no-store and nosniff, as the answers of
    routes with event data do: it comes from a handler, not the route, whatever route it is of."""
    body = {"error": {"code": code, "message": message, "details": details}}
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={**EVENT_DATA_HEADERS, **(headers or {})},
    )


def api_error_response(exc: ApiError) -> Response:
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


async def _request_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = describe_validation_errors(exc.errors())
    return error_response(422, "validation_failed", "request parameters are invalid", details)


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's bare 400 for a body it cannot parse as JSON at all (not UTF-8, nested too
        # deep): the same failure as a JSON syntax error, so the same documented 422.
        details = [{"in": "body", "field": None, "type": "json_invalid", "message": exc.detail}]
        return error_response(422, "validation_failed", "request parameters are invalid", details)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)


def dependency_down(exc: BaseException) -> Response:
    return api_error_response(dependency_unavailable(exc))


async def _dependency_down(_: Request, exc: Exception) -> Response:
    return dependency_down(exc)


def client_gone() -> Response:
    """The client went away before its request was read (or its body timed out,
    app.api.http_protocol): nothing failed here, and this answer reaches no one."""
    log.debug("client disconnected before its request was read")
    return error_response(400, "client_disconnected", "client disconnected")


async def _client_gone(_: Request, exc: Exception) -> Response:
    return client_gone()


def internal_error(exc: BaseException) -> Response:
    """A 500 for an error nothing else handled; logged with its traceback (the service's own
    code paths, no request data)."""
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error")


async def _unexpected(_: Request, exc: Exception) -> Response:
    return internal_error(exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    for error in DEPENDENCY_ERRORS:
        app.add_exception_handler(error, _dependency_down)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route's error answers: each one has the one error shape."""
    return {code: {"model": ErrorResponse} for code in codes}


# What the service answers before, or beside, any route (app.api.http_protocol and
# app.api.http_limits; the body limit; a backing service or key lookup that cannot answer):
# any operation can meet these, so every one documents them.
PROTOCOL_ANSWERS = {
    408: "The request head or body did not arrive in time; the connection is closed",
    413: "The request body is over the size limit",
    414: "The request line (the URL) is over the head size limit; the connection is closed",
    431: "The request head is over its size limit or has too many header fields",
    503: "The process holds all the connections it takes, or a backing service cannot answer "
    "now; retry after Retry-After seconds",
}


def protocol_responses() -> dict[int | str, dict[str, Any]]:
    """PROTOCOL_ANSWERS as OpenAPI `responses`, in the one error shape (a route that
    documents one of these statuses itself keeps its own entry)."""
    return {
        code: {"model": ErrorResponse, "description": text}
        for code, text in PROTOCOL_ANSWERS.items()
    }
