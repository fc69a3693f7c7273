"""The console's pages: Jinja2 templates of this package (app/console/templates), escaped
throughout (autoescape: every value that reaches a page is text unless a template says
otherwise, and none does), no script, one stylesheet served by the console (no CDN: it works on
a hospital network with no way out)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from fastapi.responses import HTMLResponse

from app.core.timefmt import format_timestamp

NAV = (
    ("/console", "Home"),
    ("/console/patient", "Patient access"),
    ("/console/principal", "Principal"),
    ("/console/events", "Search"),
    ("/console/break-glass", "Break-glass"),
    ("/console/asking", "Who has been asking"),
    ("/console/verify", "Verify ledger"),
)

EVENT_COLUMNS = ("Time", "Action", "Status", "Principal", "Patient", "Target", "Purpose")

VERDICT_CSS = {"intact": "ok", "not anchored": "warn"}

VERDICT_SHOWN = {
    "intact": "intact, anchored",
    "not anchored": "not anchored",
    "broken": "NOT intact",
}


def href(path: str, params: Mapping[str, Any]) -> str:
    """`path` with the query of `params` that have a value."""
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


def without(params: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in names}


def anchoring(summary: Mapping[str, Any]) -> str:
    """What a verification's verdict rests on, in a sentence."""
    anchors = summary.get("anchored") or []
    if not anchors:
        return (
            "No checkpoint cosigned by the log's witnesses anchors this verification: it rests "
            "on what the database holds."
        )
    parts = [
        f"chain {a['chain']}: sealed {a.get('sealed_at')}, cosigned by {', '.join(a['witnesses'])}"
        for a in anchors
    ]
    return "Anchored to the witnessed checkpoints of " + "; ".join(parts) + "."


def _time(value: datetime | None) -> str:
    return "" if value is None else format_timestamp(value)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json_indented(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _shown(value: Any) -> Any:
    """A field's value as the event page shows it: objects and lists as JSON."""
    if value is None:
        return ""
    return _json(value) if isinstance(value, dict | list) else value


@functools.cache
def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("app.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        enable_async=True,  # the verification page streams as its report comes
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals.update(
        NAV=NAV,
        EVENT_COLUMNS=EVENT_COLUMNS,
        VERDICT_CSS=VERDICT_CSS,
        VERDICT_SHOWN=VERDICT_SHOWN,
        href=href,
        without=without,
        anchoring=anchoring,
    )
    environment.filters.update(time=_time, json=_json, json_indented=_json_indented, shown=_shown)
    return environment


async def page(template: str, title: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page of `template`; `signed_in` (when given) puts the navigation and the sign-out form
    in its header."""
    context.setdefault("signed_in", None)
    body = await templates().get_template(template).render_async(title=title, **context)
    return HTMLResponse(body, status)


async def streamed(template: str, title: str, **context: Any) -> AsyncGenerator[bytes, None]:
    """A page of `template` in pieces, as it renders: a template that loops over an
    asynchronous iterable sends each item's part as the item comes."""
    context.setdefault("signed_in", None)
    pieces = templates().get_template(template).generate_async(title=title, **context)
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            yield piece.encode()
