"""POST /events and /events/bulk, served ahead of the framework.

Routing, dependency injection, the generic HTTP-metrics middleware and the framework's own
middleware layers (error pages, telemetry, body limits) are a large part of what a single-event
request costs. `AuditApp` takes the two ingest routes before all of that and calls the very same
answers (app.api.ingest_answers) with the same authentication, limits, answers and error shapes
(an unexpected error is the same 500 the framework's handler gives); the routes stay registered,
so the OpenAPI document still describes them. They are counted and timed in the same metric
families as every other route (`http_requests_total`, `http_request_duration_seconds`,
app.api.request_metrics).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.api import access_log
from app.api.errors import api_error_response, client_gone, dependency_down, internal_error
from app.api.ingest_answers import bulk_answer, event_answer
from app.api.request_metrics import RequestMetrics
from app.core.caller import Caller
from app.core.errors import ApiError
from app.http.auth import authorize
from app.http.errors import DEPENDENCY_ERRORS
from app.intake.service import Ingest

Handler = Callable[[Ingest, Request, Caller], Awaitable[Response]]

ROUTES: dict[str, Handler] = {"/events": event_answer, "/events/bulk": bulk_answer}


class AuditApp(FastAPI):
    """The service's ASGI app: the ingest POSTs go straight to their handlers, the rest through
    the framework; every request is logged (app.api.access_log) and measured."""

    # The HTTP metrics (app.api.request_metrics), set by create_app.
    request_metrics: RequestMetrics | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app sends nothing

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        handler = ROUTES.get(scope["path"])
        route = scope["path"]
        try:
            if handler is None or scope["method"] != "POST":
                await super().__call__(scope, receive, sending)
                route = access_log.route_template(scope)
                return
            scope["app"] = self
            request = Request(scope, receive)
            response = await _answer(self.state.resources.ingest, request, handler)
            await response(scope, receive, sending)
            if self.request_metrics is not None:
                seconds = time.perf_counter() - started
                self.request_metrics.observe(route, "POST", str(status), seconds)
        finally:
            self._recorded(scope, route, status, time.perf_counter() - started)

    def _recorded(self, scope: Scope, route: str, status: int, seconds: float) -> None:
        res = getattr(self.state, "resources", None)
        if res is not None and res.settings.access_log:  # the lifespan is running
            access_log.record(scope, route, status, seconds)


async def _answer(ingest: Ingest, request: Request, handler: Handler) -> Response:
    try:
        return await handler(ingest, request, await authorize(request, "ingest"))
    except ApiError as exc:
        return api_error_response(exc)
    except DEPENDENCY_ERRORS as exc:
        return dependency_down(exc)
    except ClientDisconnect:
        return client_gone()
    except Exception as exc:
        return internal_error(exc)
