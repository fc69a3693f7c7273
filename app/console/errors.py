"""The console's own error pages: what fails before, beside or inside a page (signing in, a key
lookup, Redis or PostgreSQL that cannot answer, a form that does not validate, a path that is no
page) is answered on a page with the API's status and Retry-After, never in the API's JSON."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.console import session as sessions
from app.console.headers import ALL_HEADERS
from app.console.render import page
from app.console.signed_in import SignInRequired
from app.core.errors import ApiError
from app.http.errors import DEPENDENCY_ERRORS, dependency_unavailable

log = logging.getLogger(__name__)


def to_login(revoked: bool = False) -> RedirectResponse:
    target = "/console/login" + ("?signed_out=revoked" if revoked else "")
    response = RedirectResponse(target, 303)
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response


async def failure_page(
    request: Request, message: str, status: int = 400, headers: Mapping[str, str] | None = None
) -> Response:
    """What failed, on the console's own page, with the API's status and headers
    (Retry-After); signed in, the page keeps its navigation."""
    signed_in = getattr(request.state, "signed_in", None)
    answer = await page(
        "failure.html", "Something is wrong", status, message=message, signed_in=signed_in
    )
    answer.headers.update(headers or {})
    return answer


async def _sign_in(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return to_login(exc.revoked)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return await failure_page(request, exc.message, exc.status_code, exc.headers)


async def _dependency_down(request: Request, exc: Exception) -> Response:
    failure = dependency_unavailable(exc)  # as the API answers it: 503 with Retry-After
    return await failure_page(request, failure.message, failure.status_code, failure.headers)


async def _invalid_form(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    return await failure_page(request, f"Check the form: {problems}", 400)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return await failure_page(request, str(exc.detail), exc.status_code, exc.headers)


async def _client_gone(request: Request, _: Exception) -> Response:
    log.debug("client disconnected before its request was read")
    return await failure_page(request, "client disconnected", 400)


async def _unexpected(request: Request, _: Exception) -> Response:
    """A 500 on a page. It is answered outside the console's middleware, so it says the
    headers itself; the error goes on to the service's own handler, which logs it."""
    return await failure_page(request, "internal error", 500, ALL_HEADERS)


def install_error_pages(app: FastAPI) -> None:
    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(ApiError, _api_error)
    for error in DEPENDENCY_ERRORS:
        app.add_exception_handler(error, _dependency_down)
    app.add_exception_handler(ValidationError, _invalid_form)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
