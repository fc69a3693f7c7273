"""Answers that can carry audit events (and so PHI) are for the caller alone: no cache may keep
them and no browser may guess their type. The API's routers whose routes answer with events
(lists, details, proofs, PHI reports, verifications, dead letters, exports) build their routes
with `EventDataRoute`, so a route added to one of them has the headers without asking for them,
a streamed export too: they go out with the status line, before the first chunk. The console
says them on every answer (app.console.headers)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

EVENT_DATA_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class EventDataRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        answer = super().get_route_handler()

        async def answer_uncached(request: Request) -> Response:
            response = await answer(request)
            response.headers.update(EVENT_DATA_HEADERS)
            return response

        return answer_uncached
