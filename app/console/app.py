"""The compliance console (`/console`): server-rendered pages over the API's own read services,
for compliance staff with a `read` key. Sign in with the key (a session cookie, CSRF-checked
forms); every page view goes through the same services as the API's reads, so each is recorded
as an `audit.*` event like them. No script and no CDN: one stylesheet, served here.

A FastAPI app of its own, mounted in the API's (app.api.app): its own dependencies (the session,
app.console.signed_in), middleware (app.console.headers) and error pages (app.console.errors)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Response
from starlette.datastructures import State
from starlette.routing import Match, Mount
from starlette.types import Scope

from app.console.errors import install_error_pages
from app.console.headers import ConsoleHeaders
from app.console.pages import add_pages

PREFIX = "/console"


class ConsoleMount(Mount):
    """The console at PREFIX, its home at PREFIX itself (a plain mount answers only below it,
    and would send PREFIX on to PREFIX/)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] == "http" and path == self.path:
            return super().matches({**scope, "path": scope["path"] + "/"})
        return super().matches(scope)


def create_console(state: State) -> FastAPI:
    """The console, sharing `state` (the resources the lifespan opens) with the app it is
    mounted in: a mounted app's own lifespan never runs."""
    console = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    console.state = state
    console.add_middleware(ConsoleHeaders)
    install_error_pages(console)
    add_pages(console)
    style = files("app.console").joinpath("static/console.css").read_text()

    async def stylesheet() -> Response:
        return Response(style, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    console.add_api_route("/static/console.css", stylesheet, methods=["GET"])
    return console


def console_mount(state: State) -> ConsoleMount:
    return ConsoleMount(PREFIX, app=create_console(state))
