"""Every console answer (pages, redirects, error pages, exports, the verification's stream)
forbids framing, scripts and referrers, and holds event data: no cache may keep it and no
browser may guess its type. The stylesheet alone may be cached."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.event_data import EVENT_DATA_HEADERS

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

ALL_HEADERS = {**SECURITY_HEADERS, **EVENT_DATA_HEADERS}

CACHEABLE = frozenset({"/static/console.css"})  # paths within the console


class ConsoleHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", ""))  # within the console
        headers = SECURITY_HEADERS if path in CACHEABLE else ALL_HEADERS

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(headers)
            await send(message)

        await self.app(scope, receive, sending)
