"""The compliance console's HTML: pages built from escaped parts, no script, one stylesheet
served by the app (no CDN: it works on a hospital network with no way out)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from app.core.timefmt import format_timestamp

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f6f7f9; }
header { background: #16324f; color: #fff; padding: .6rem 1.2rem; display: flex; gap: 1.2rem;
  align-items: center; flex-wrap: wrap; }
header a { color: #dce9f7; text-decoration: none; } header a:hover { text-decoration: underline; }
header .who { margin-left: auto; font-size: .9em; opacity: .9; }
main { padding: 1rem 1.2rem 3rem; max-width: 80rem; }
h1 { font-size: 1.35rem; margin: .4rem 0 1rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: .9em; }
th, td { border: 1px solid #d9dde3; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; } tr.glass td { background: #fff4e5; }
form.filters { display: flex; gap: .6rem; flex-wrap: wrap; align-items: end; margin-bottom: 1rem; }
label { display: flex; flex-direction: column; font-size: .85em; gap: .15rem; }
input, select, button { font: inherit; padding: .25rem .4rem; }
button, .button { background: #1f5d99; color: #fff; border: 0; border-radius: 3px;
  padding: .35rem .8rem; text-decoration: none; display: inline-block; cursor: pointer; }
.badge { display: inline-block; padding: .15rem .6rem; border-radius: 3px; font-weight: 600; }
.ok { background: #dff3e4; color: #17602d; } .bad { background: #fde2e1; color: #8a1c17; }
.warn { background: #fff4d6; color: #7a5200; }
.unchecked { background: #eef1f5; color: #3a4350; }
.error { background: #fde2e1; border: 1px solid #f0b4b0; padding: .6rem .8rem; }
.note { color: #566070; font-size: .9em; } code, pre { font-size: .85em; }
pre { background: #fff; border: 1px solid #d9dde3; padding: .6rem; overflow-x: auto; }
nav.pages { margin: .8rem 0; display: flex; gap: .6rem; }
"""

NAV = (
    ("/console", "Home"),
    ("/console/patient", "Patient access"),
    ("/console/principal", "Principal"),
    ("/console/events", "Search"),
    ("/console/break-glass", "Break-glass"),
    ("/console/asking", "Who has been asking"),
    ("/console/verify", "Verify ledger"),
)


def h(value: Any) -> str:
    """Text for HTML: every value that reaches a page goes through here."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = format_timestamp(value)
    return escape(str(value), quote=True)


def link(path: str, params: Mapping[str, Any], text: str, css: str = "") -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    href = f"{path}?{query}" if query else path
    return f'<a href="{h(href)}"{f" class={css!r}" if css else ""}>{h(text)}</a>'


def page(title: str, body: str, *, who: str = "", csrf: str = "") -> str:
    nav = "".join(f'<a href="{path}">{h(text)}</a>' for path, text in NAV) if who else ""
    sign_out = ""
    if who:
        sign_out = (
            f'<span class="who">{h(who)}</span>'
            '<form method="post" action="/console/logout">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}">'
            '<button type="submit" id="sign-out">Sign out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} - audit-ingest</title>"
        '<link rel="stylesheet" href="/console/static/console.css"></head><body>'
        f"<header><strong>audit-ingest</strong>{nav}{sign_out}</header>"
        f"<main><h1>{h(title)}</h1>{body}</main></body></html>"
    )


def table(
    headings: Sequence[str], rows: Iterable[Sequence[str]], *, css: Sequence[str] = ()
) -> str:
    """Cells are HTML already (escaped by the caller with `h` or built with `link`)."""
    head = "".join(f"<th>{h(name)}</th>" for name in headings)
    body = []
    for i, row in enumerate(rows):
        marker = f' class="{css[i]}"' if i < len(css) and css[i] else ""
        body.append(f"<tr{marker}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    if not body:
        return '<p class="note">Nothing found.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def field(name: str, label: str, value: Any = "", kind: str = "text") -> str:
    return (
        f'<label>{h(label)}<input type="{kind}" name="{h(name)}" id="{h(name)}" '
        f'value="{h(value)}"></label>'
    )


def error(message: str) -> str:
    return f'<p class="error" role="alert">{h(message)}</p>'
