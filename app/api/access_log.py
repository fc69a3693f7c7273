"""One line per HTTP request: method, route template, status, duration and the
API key that asked. Only the route's template is kept (`/phi-access/patients/{patient_id}`),
never the path's values, the query or a body, which may hold PHI."""

from __future__ import annotations

import logging

from starlette.routing import Mount
from starlette.types import Scope

log = logging.getLogger("app.access")
UNMATCHED = "unmatched"  # no route: its path is the client's text, not ours to log or count


def route_template(scope: Scope) -> str:
    """The template of the route that answered, whole: a route of a mounted app (the console)
    has the mount's path before its own."""
    route = scope.get("route")
    if isinstance(route, Mount):  # an opaque app is its own template; a mounted router that
        return UNMATCHED if route.routes else route.path  # matched none of its routes, none
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    root: str = scope.get("root_path", "")
    mounted_at = root[len(scope.get("app_root_path", root)) :]
    return mounted_at + path


def key_id(scope: Scope) -> str | None:
    """The API key the request authenticated with (set on the request's state), if any."""
    state = scope.get("state")
    found = state.get("key_id") if isinstance(state, dict) else None
    return found if isinstance(found, str) else None


def record(scope: Scope, route: str, status: int, seconds: float) -> None:
    if log.isEnabledFor(logging.INFO):  # no line built for a level that drops it
        log.info(
            "request",
            extra={
                "method": scope.get("method", ""),
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "key_id": key_id(scope),
            },
        )
