"""The compliance console (`/console`): server-rendered pages over the API's own reads, for
compliance staff with a `read` key. Sign in with the key (a session cookie, CSRF-checked forms);
every page view goes through the same functions as the API's reads, so each is recorded as an
`audit.*` event like them. No script and no CDN: one stylesheet, served here."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, ValidationError

from app.api import console_session
from app.api.console_html import STYLE, error, field, h, link, page, table
from app.apikeys.keys import hash_api_key
from app.core.caller import Caller
from app.core.errors import ApiError, NotFound
from app.core.tokens import token_matches
from app.events.fields import Identifier
from app.http.deps import resources
from app.http.errors import DEPENDENCY_ERRORS, dependency_unavailable
from app.http.event_data import EVENT_DATA_HEADERS, EventDataRoute
from app.http.exports import export_answer
from app.http.guarded_stream import GuardedStream
from app.ledger.proofs import NOT_SEALED
from app.read.integrity import Ranges, ReportLine
from app.read.models import EventFilters, EventOut, ExportFilters, PhiFilters, Subject
from app.read.trail import Reader

MAX_FORM_BYTES = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}  # and no-store, nosniff: every console route is an EventDataRoute
EVENT_COLUMNS = ("Time", "Action", "Status", "Principal", "Patient", "Target", "Purpose")
Page = Callable[[Request, Caller, console_session.Session], Awaitable[Response]]


def html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


def failure_page(failure: ApiError, who: str = "", csrf: str = "") -> HTMLResponse:
    """What failed, on the console's own page: the API's status and headers (Retry-After)."""
    body = page("Something is wrong", error(failure.message), who=who, csrf=csrf)
    answer = html(body, failure.status_code)
    answer.headers.update({**failure.headers, **EVENT_DATA_HEADERS})
    return answer


class ConsoleRoute(EventDataRoute):
    """A console route answers what fails before or beside a page (signing in, a key lookup,
    Redis or PostgreSQL that cannot answer) on a page of its own, never in the API's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        answer = super().get_route_handler()

        async def answer_on_a_page(request: Request) -> Response:
            try:
                return await answer(request)
            except ApiError as exc:
                return failure_page(exc)
            except DEPENDENCY_ERRORS as exc:
                return failure_page(dependency_unavailable(exc))

        return answer_on_a_page


router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


def to_login(message: str = "") -> RedirectResponse:
    target = "/console/login" + ("?signed_out=revoked" if message == "revoked" else "")
    response = RedirectResponse(target, 303, headers=SECURITY_HEADERS)
    response.delete_cookie(console_session.COOKIE, path="/console")
    return response


async def _signed_in(request: Request) -> tuple[Caller, console_session.Session] | Response:
    res = resources(request)
    session = await console_session.load(
        res.redis, res.settings, request.cookies.get(console_session.COOKIE)
    )
    if session is None:
        return to_login()
    caller = await res.key_cache.verify(session.key_hash)
    if caller is None or "read" not in caller.scopes:  # revoked: the session goes with it
        await console_session.delete(res.redis, res.settings, session.sid)
        return to_login("revoked")
    request.state.key_id = caller.key_id  # for the access log
    return caller, session


def console_page(handler: Page) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        found = await _signed_in(request)
        if isinstance(found, Response):
            return found
        caller, session = found
        try:
            return await handler(request, caller, session)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]
            )
            failure = ApiError(f"Check the form: {problems}")  # 400
        except ApiError as exc:  # the API's status (and Retry-After), on the console's page
            failure = exc
        except DEPENDENCY_ERRORS as exc:  # as the API answers them: 503 with Retry-After
            failure = dependency_unavailable(exc)
        return failure_page(failure, _who(caller), session.csrf)

    serve.__name__ = handler.__name__
    return serve


def _who(caller: Caller) -> str:
    return f"{caller.organization_id} · key {caller.key_id[:8]}"


def _asked(request: Request, *names: str) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if v and (not names or k in names)}


def _event_rows(items: list[EventOut]) -> tuple[list[list[str]], list[str]]:
    rows, css = [], []
    for item in items:
        target = " ".join(filter(None, [item.target_resource_type, item.target_resource_id]))
        rows.append(
            [
                link(f"/console/events/{item.event_id}", {}, str(item.timestamp)),
                h(item.action),
                h(item.status),
                h(item.principal_id),
                h(item.patient_id),
                h(target),
                h(item.purpose_of_use)
                + (" <strong>break-glass</strong>" if item.break_glass else ""),
            ]
        )
        css.append("glass" if item.break_glass else "")
    return rows, css


def _next(
    path: str,
    asked: dict[str, str],
    cursor: str | None,
    text: str = "Next page",
    key: str = "cursor",
) -> str:
    if not cursor:
        return ""
    return f'<nav class="pages">{link(path, {**asked, key: cursor}, text, "button")}</nav>'


async def stylesheet() -> Response:
    return Response(STYLE, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


# The one console route without event data: the stylesheet may be cached.
router.add_api_route(
    "/static/console.css", stylesheet, methods=["GET"], route_class_override=APIRoute
)


@router.get("/login")
async def login_form(request: Request) -> Response:
    token = secrets.token_urlsafe(32)
    note = ""
    if request.query_params.get("signed_out") == "revoked":
        note = error("You were signed out: the key is no longer valid.")
    body = (
        f"{note}<p>Sign in with an API key of your organization that has the "
        "<code>read</code> scope. Every page you open is recorded in the audit trail.</p>"
        '<form method="post" action="/console/login" class="filters">'
        f'<input type="hidden" name="csrf" value="{h(token)}">'
        f"{field('api_key', 'API key', kind='password')}"
        '<button type="submit" id="sign-in">Sign in</button></form>'
    )
    response = html(page("Sign in", body))
    settings = resources(request).settings
    response.headers.append(
        "Set-Cookie", console_session.cookie(console_session.LOGIN_COOKIE, token, settings)
    )
    return response


async def _form(request: Request) -> dict[str, str]:
    """A small url-encoded form; {} for anything larger or malformed (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        parsed = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:
        return {}
    return {k: v[0] for k, v in parsed.items()}


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    expected = request.cookies.get(console_session.LOGIN_COOKIE, "")
    if not expected or not token_matches(expected, form.get("csrf")):
        return html(page("Sign in", error("The form expired; open the sign-in page again.")), 403)
    res = resources(request)
    key_hash = hash_api_key(form.get("api_key", "").strip())
    caller = await res.key_cache.verify(key_hash)
    if caller is None or "read" not in caller.scopes:
        message = "That key is unknown, revoked, or lacks the read scope."
        return html(
            page("Sign in", error(message) + '<p><a href="/console/login">Try again</a></p>'), 401
        )
    session = await console_session.create(
        res.redis, res.settings, key_hash, caller.key_id, caller.organization_id
    )
    response = RedirectResponse("/console", 303, headers=SECURITY_HEADERS)
    response.headers.append(
        "Set-Cookie",
        console_session.cookie(
            console_session.COOKIE,
            session.sid,
            res.settings,
            max_age=res.settings.console_session_s,
        ),
    )
    response.delete_cookie(console_session.LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    res = resources(request)
    session = await console_session.load(
        res.redis, res.settings, request.cookies.get(console_session.COOKIE)
    )
    form = await _form(request)
    if session is not None:
        if not token_matches(session.csrf, form.get("csrf")):
            return html(page("Sign out", error("The form expired; sign out again.")), 403)
        await console_session.delete(res.redis, res.settings, session.sid)
    return to_login()


async def _home(request: Request, caller: Caller, session: console_session.Session) -> Response:
    body = (
        "<h2>Who looked at this patient's chart?</h2>"
        '<form method="get" action="/console/patient" class="filters">'
        f"{field('patient_id', 'Patient id')}{field('start', 'From (RFC 3339)')}"
        '<button type="submit" id="patient-report">Report</button></form>'
        "<h2>Whose charts did this person open?</h2>"
        '<form method="get" action="/console/principal" class="filters">'
        f"{field('principal_id', 'Principal id')}{field('start', 'From (RFC 3339)')}"
        '<button type="submit">Report</button></form>'
        "<h2>Search events</h2>"
        '<form method="get" action="/console/events" class="filters">'
        f"{field('action_prefix', 'Action prefix')}{field('principal_id', 'Principal')}"
        f"{field('patient_id', 'Patient')}{field('correlation_id', 'Correlation id')}"
        '<button type="submit">Search</button></form>'
    )
    return html(page("Compliance console", body, who=_who(caller), csrf=session.csrf))


class ReportSubject(BaseModel):
    """Whom a report is about, held to what the API's report paths take."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Identifier | None = None
    principal_id: Identifier | None = None


async def _report(
    request: Request, caller: Caller, session: console_session.Session, subject: Subject
) -> Response:
    label = "Patient" if subject == "patient_id" else "Principal"
    path = "/console/patient" if subject == "patient_id" else "/console/principal"
    asked = _asked(request, subject, "start", "end", "cursor", "summary_cursor")
    value = asked.get(subject, "")
    form = (
        f'<form method="get" action="{path}" class="filters">'
        f"{field(subject, f'{label} id', value)}{field('start', 'From', asked.get('start', ''))}"
        f"{field('end', 'Until', asked.get('end', ''))}"
        '<button type="submit" id="run-report">Report</button></form>'
    )
    title = f"{label} access report"
    if not value:
        return html(page(title, form, who=_who(caller), csrf=session.csrf))
    ReportSubject.model_validate({subject: value})
    window = {k: v for k, v in asked.items() if k in ("start", "end")}
    reports = resources(request).phi_reports
    reader = Reader(caller, request.url.path)
    summary = await reports.summary(
        reader,
        subject,
        value,
        PhiFilters.model_validate(
            {**window, "summary": True, "limit": 50, "cursor": asked.get("summary_cursor")}
        ),
    )
    listing = await reports.events(
        reader,
        subject,
        value,
        PhiFilters.model_validate({**window, "limit": 25, "cursor": asked.get("cursor")}),
    )
    counterpart = "Person" if subject == "patient_id" else "Patient"
    summary_rows = [
        [h(value) for value in (c.counterpart, c.accesses, c.break_glass_accesses)]
        + [h(c.first_access), h(c.last_access)]
        for c in summary.items
    ]
    rows, css = _event_rows(listing.items)
    exports = _exports({subject: value, **window})
    body = (
        form
        + f"<h2>Per {counterpart.lower()}</h2>"
        + table([counterpart, "Accesses", "Break-glass", "First", "Last"], summary_rows)
        + _next(path, asked, summary.next_cursor, "More", key="summary_cursor")
        + "<h2>Events</h2>"
        + table(EVENT_COLUMNS, rows, css=css)
        + _next(path, {k: v for k, v in asked.items() if k != "cursor"}, listing.next_cursor)
        + f'<p class="exports">{exports}</p>'
    )
    return html(page(f"{title}: {value}", body, who=_who(caller), csrf=session.csrf))


async def _patient(request: Request, caller: Caller, session: console_session.Session) -> Response:
    return await _report(request, caller, session, "patient_id")


async def _principal(
    request: Request, caller: Caller, session: console_session.Session
) -> Response:
    return await _report(request, caller, session, "principal_id")


def _exports(selection: dict[str, str]) -> str:
    return " ".join(
        link("/console/export", {**selection, "format": fmt}, f"Export {fmt.upper()}", "button")
        for fmt in ("csv", "ndjson", "fhir")
    )


async def _search(
    request: Request,
    caller: Caller,
    session: console_session.Session,
    fixed: dict[str, Any],
    title: str,
    path: str,
) -> Response:
    asked = _asked(request)
    filters = EventFilters.model_validate({"limit": 50, **asked, **fixed})
    reader = Reader(caller, request.url.path)
    result = await resources(request).event_reads.search(reader, filters)
    rows, css = _event_rows(result.items)
    shown = {k: v for k, v in asked.items() if k != "cursor"}
    form = (
        f'<form method="get" action="{path}" class="filters">'
        + "".join(
            field(name, label, asked.get(name, ""))
            for name, label in (
                ("action_prefix", "Action prefix"),
                ("principal_id", "Principal"),
                ("patient_id", "Patient"),
                ("correlation_id", "Correlation id"),
                ("start", "From"),
                ("end", "Until"),
            )
            if name not in fixed
        )
        + '<button type="submit" id="search">Search</button></form>'
    )
    exports = _exports({**shown, **{k: str(v).lower() for k, v in fixed.items()}})
    body = (
        form
        + table(EVENT_COLUMNS, rows, css=css)
        + _next(path, shown, result.next_cursor)
        + f'<p class="exports">{exports}</p>'
    )
    return html(page(title, body, who=_who(caller), csrf=session.csrf))


async def _events(request: Request, caller: Caller, session: console_session.Session) -> Response:
    return await _search(request, caller, session, {}, "Search events", "/console/events")


async def _break_glass(
    request: Request, caller: Caller, session: console_session.Session
) -> Response:
    fixed = {"break_glass": True}
    return await _search(
        request, caller, session, fixed, "Break-glass review", "/console/break-glass"
    )


async def _asking(request: Request, caller: Caller, session: console_session.Session) -> Response:
    fixed = {"action_prefix": "audit."}
    return await _search(request, caller, session, fixed, "Who has been asking", "/console/asking")


async def _detail(request: Request, caller: Caller, session: console_session.Session) -> Response:
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError as exc:
        raise NotFound("no such event in your organization") from exc
    res = resources(request)
    reader = Reader(caller, request.url.path)
    item = await res.event_reads.event(reader, event_id)
    verdict = await res.integrity.verdict(reader, event_id)
    found = verdict.proof if verdict is not None else None
    problems = list(verdict.problems) if verdict is not None else [NOT_SEALED]
    if found is not None and found["event_hash"] != item.hash:
        problems.append("the proof is of another row than the one shown")
    if problems:
        badge = (
            f'<span class="badge bad" id="not-verified">Not verified: {h("; ".join(problems))}'
            "</span>"
        )
    elif verdict is not None and verdict.unchecked:
        badge = (
            f'<span class="badge unchecked" id="not-checked">Not checked: {h(verdict.unchecked)}'
            "</span>"
        )
    else:
        badge = (
            '<span class="badge ok" id="verified">Verified: unchanged, signed, sealed in the '
            "ledger</span>"
        )
    fields = item.model_dump(mode="json")
    rows = [
        [
            h(name),
            f"<code>{h(_shown(value))}</code>",
        ]
        for name, value in fields.items()
    ]
    body = (
        f"<p>{badge}</p>"
        + table(["Field", "Value"], rows)
        + "<h2>Inclusion proof</h2>"
        + (
            f"<pre>{h(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())}</pre>"
            if found is not None
            else "<p>None: no ledger entry holds this event.</p>"
        )
        + '<p class="note">The badge says what a verification of the ledger says of this '
        "event: its fields recompute to its hash, the hash carries the named key's signature, "
        "the audit path leads from the hash to the batch's Merkle root, and the ledger entry's "
        "signed head commits to that root; see the tamper-evidence guide to check it "
        "yourself.</p>"
    )
    return html(page(f"Event {event_id}", body, who=_who(caller), csrf=session.csrf))


def _shown(value: Any) -> Any:
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else value


async def _verify(request: Request, caller: Caller, session: console_session.Session) -> Response:
    if "verify" not in caller.scopes:
        body = error("Verifying the ledger needs a key with the verify scope.")
        return html(page("Verify the ledger", body, who=_who(caller), csrf=session.csrf), 403)
    if request.query_params.get("run") != "1":
        body = (
            "<p>Recomputes every hash, signature, Merkle root and chain link of your "
            "organization's part of the ledger. Progress shows as it runs.</p>"
            '<p><a class="button" id="run-verify" href="/console/verify?run=1">Verify now</a></p>'
        )
        return html(page("Verify the ledger", body, who=_who(caller), csrf=session.csrf))
    reader = Reader(caller, request.url.path)
    verification = await resources(request).integrity.verification(reader, Ranges())
    head, tail = page(
        "Verify the ledger", '<ol id="progress">@@@</ol>', who=_who(caller), csrf=session.csrf
    ).split("@@@")
    return GuardedStream(
        _html_lines(head, verification.lines, tail),
        slot=verification.slot,
        send_timeout_s=verification.send_timeout_s,
        media_type="text/html; charset=utf-8",
        headers=SECURITY_HEADERS,
    )


VERDICT_CSS = {"intact": "ok", "not anchored": "warn"}

VERDICT_SHOWN = {
    "intact": "intact, anchored",
    "not anchored": "not anchored",
    "broken": "NOT intact",
}


def _anchoring(summary: dict[str, Any]) -> str:
    """What the verdict rests on, in a sentence."""
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


async def _html_lines(
    head: str, lines: AsyncGenerator[ReportLine, None], tail: str
) -> AsyncIterator[bytes]:
    yield head.encode()
    async with contextlib.aclosing(lines):
        async for kind, value in lines:
            yield _html_line(kind, value).encode()
    yield tail.encode()


def _html_line(kind: str, value: Any) -> str:
    if kind == "summary":
        verdict = value.get("verdict", "broken")
        css = VERDICT_CSS.get(verdict, "bad")
        shown = VERDICT_SHOWN.get(verdict, "NOT intact")
        badge = f'<span class="badge {css}" id="verdict">{h(shown)}</span>'
        return f"<li>{badge} {h(_anchoring(value))} {h(orjson.dumps(value).decode())}</li>"
    return f"<li>{h(kind)}: {h(orjson.dumps(value).decode())}</li>"


async def _export(request: Request, caller: Caller, session: console_session.Session) -> Response:
    filters = ExportFilters.model_validate(_asked(request))
    reader = Reader(caller, request.url.path)
    return export_answer(await resources(request).event_reads.export(reader, filters))


for route, handler in (
    ("", _home),
    ("/patient", _patient),
    ("/principal", _principal),
    ("/events", _events),
    ("/events/{event_id}", _detail),
    ("/break-glass", _break_glass),
    ("/asking", _asking),
    ("/verify", _verify),
    ("/export", _export),
):
    router.add_api_route(route, console_page(handler), methods=["GET"])
