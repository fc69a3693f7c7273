"""The console's pages. Each is one call into the read services the API calls (so each view is
recorded as an `audit.*` event like the API's reads) and the page that shows its answer."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict

from app.apikeys.keys import hash_api_key
from app.console import session as sessions
from app.console.errors import to_login
from app.console.forms import small_form
from app.console.render import page, streamed
from app.console.signed_in import SignedIn, SignedInDep
from app.core.errors import NotFound
from app.core.tokens import token_matches
from app.events.fields import Identifier
from app.http.deps import EventReadsDep, IntegrityDep, PhiReportsDep, ResourcesDep
from app.http.exports import export_answer
from app.http.guarded_stream import GuardedStream
from app.ledger.proofs import NOT_SEALED
from app.read.integrity import Ranges, Verification
from app.read.models import EventFilters, ExportFilters, PhiFilters, Subject

router = APIRouter()

SEARCH_FIELDS = (
    ("action_prefix", "Action prefix"),
    ("principal_id", "Principal"),
    ("patient_id", "Patient"),
    ("correlation_id", "Correlation id"),
    ("start", "From"),
    ("end", "Until"),
)


def asked(request: Request, *names: str) -> dict[str, str]:
    """The query's parameters that have a value (of `names`, when given)."""
    return {k: v for k, v in request.query_params.items() if v and (not names or k in names)}


@router.get("/login")
async def login_form(request: Request, res: ResourcesDep) -> Response:
    token = secrets.token_urlsafe(32)
    revoked = request.query_params.get("signed_out") == "revoked"
    response = await page("login.html", "Sign in", csrf=token, revoked=revoked)
    response.headers.append(
        "Set-Cookie", sessions.cookie(sessions.LOGIN_COOKIE, token, res.settings)
    )
    return response


@router.post("/login")
async def login(request: Request, res: ResourcesDep) -> Response:
    form = await small_form(request)
    expected = request.cookies.get(sessions.LOGIN_COOKIE, "")
    if not expected or not token_matches(expected, form.get("csrf")):
        message = "The form expired; open the sign-in page again."
        return await page("sign_in_refused.html", "Sign in", 403, message=message, again=False)
    key_hash = hash_api_key(form.get("api_key", "").strip())
    caller = await res.key_cache.verify(key_hash)
    if caller is None or "read" not in caller.scopes:
        message = "That key is unknown, revoked, or lacks the read scope."
        return await page("sign_in_refused.html", "Sign in", 401, message=message, again=True)
    session = await sessions.create(
        res.redis, res.settings, key_hash, caller.key_id, caller.organization_id
    )
    response = RedirectResponse("/console", 303)
    response.headers.append(
        "Set-Cookie",
        sessions.cookie(
            sessions.COOKIE, session.sid, res.settings, max_age=res.settings.console_session_s
        ),
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
async def logout(request: Request, res: ResourcesDep) -> Response:
    session = await sessions.load(res.redis, res.settings, request.cookies.get(sessions.COOKIE))
    form = await small_form(request)
    if session is not None:
        if not token_matches(session.csrf, form.get("csrf")):
            message = "The form expired; sign out again."
            return await page("failure.html", "Sign out", 403, message=message)
        await sessions.delete(res.redis, res.settings, session.sid)
    return to_login()


async def home(signed_in: SignedInDep) -> HTMLResponse:
    return await page("home.html", "Compliance console", signed_in=signed_in)


@router.get("/")
async def home_slash() -> RedirectResponse:
    return RedirectResponse("/console", 307)


class ReportSubject(BaseModel):
    """Whom a report is about, held to what the API's report paths take."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Identifier | None = None
    principal_id: Identifier | None = None


async def _report(
    request: Request, signed_in: SignedIn, reports: PhiReportsDep, subject: Subject
) -> HTMLResponse:
    label = "Patient" if subject == "patient_id" else "Principal"
    shown = asked(request, subject, "start", "end", "cursor", "summary_cursor")
    value = shown.get(subject, "")
    context: dict[str, Any] = {
        "path": "/console/patient" if subject == "patient_id" else "/console/principal",
        "subject": subject,
        "label": label,
        "value": value,
        "asked": shown,
        "signed_in": signed_in,
        "summary": None,
    }
    title = f"{label} access report"
    if not value:
        return await page("report.html", title, **context)
    ReportSubject.model_validate({subject: value})
    window = {k: v for k, v in shown.items() if k in ("start", "end")}
    summary_filters = {**window, "limit": 50, "cursor": shown.get("summary_cursor")}
    listing_filters = {**window, "limit": 25, "cursor": shown.get("cursor")}
    reader = signed_in.reader
    context["summary"] = await reports.summary(
        reader, subject, value, PhiFilters.model_validate(summary_filters)
    )
    context["listing"] = await reports.events(
        reader, subject, value, PhiFilters.model_validate(listing_filters)
    )
    context["counterpart"] = "Person" if subject == "patient_id" else "Patient"
    context["selection"] = {subject: value, **window}
    return await page("report.html", f"{title}: {value}", **context)


@router.get("/patient")
async def patient_report(
    request: Request, signed_in: SignedInDep, reports: PhiReportsDep
) -> HTMLResponse:
    return await _report(request, signed_in, reports, "patient_id")


@router.get("/principal")
async def principal_report(
    request: Request, signed_in: SignedInDep, reports: PhiReportsDep
) -> HTMLResponse:
    return await _report(request, signed_in, reports, "principal_id")


async def _search(
    request: Request,
    signed_in: SignedIn,
    reads: EventReadsDep,
    fixed: dict[str, Any],
    title: str,
    path: str,
) -> HTMLResponse:
    given = asked(request)
    filters = EventFilters.model_validate({"limit": 50, **given, **fixed})
    found = await reads.search(signed_in.reader, filters)
    shown = {k: v for k, v in given.items() if k != "cursor"}
    return await page(
        "search.html",
        title,
        signed_in=signed_in,
        path=path,
        asked=given,
        shown=shown,
        fields=[(name, label) for name, label in SEARCH_FIELDS if name not in fixed],
        page=found,
        selection={**shown, **{k: str(v).lower() for k, v in fixed.items()}},
    )


@router.get("/events")
async def search(request: Request, signed_in: SignedInDep, reads: EventReadsDep) -> HTMLResponse:
    return await _search(request, signed_in, reads, {}, "Search events", "/console/events")


@router.get("/break-glass")
async def break_glass(
    request: Request, signed_in: SignedInDep, reads: EventReadsDep
) -> HTMLResponse:
    fixed = {"break_glass": True}
    return await _search(
        request, signed_in, reads, fixed, "Break-glass review", "/console/break-glass"
    )


@router.get("/asking")
async def asking(request: Request, signed_in: SignedInDep, reads: EventReadsDep) -> HTMLResponse:
    fixed = {"action_prefix": "audit."}
    return await _search(request, signed_in, reads, fixed, "Who has been asking", "/console/asking")


@router.get("/events/{event_id}")
async def event(
    event_id: str, signed_in: SignedInDep, reads: EventReadsDep, integrity: IntegrityDep
) -> HTMLResponse:
    try:
        found_id = uuid.UUID(event_id)
    except ValueError as exc:
        raise NotFound("no such event in your organization") from exc
    item = await reads.event(signed_in.reader, found_id)
    verdict = await integrity.verdict(signed_in.reader, found_id)
    proof = verdict.proof if verdict is not None else None
    problems = list(verdict.problems) if verdict is not None else [NOT_SEALED]
    if proof is not None and proof["event_hash"] != item.hash:
        problems.append("the proof is of another row than the one shown")
    return await page(
        "event.html",
        f"Event {found_id}",
        signed_in=signed_in,
        problems=problems,
        unchecked=verdict.unchecked if verdict is not None else "",
        fields=item.model_dump(mode="json"),
        proof=proof,
    )


@router.get("/verify")
async def verify(request: Request, signed_in: SignedInDep, integrity: IntegrityDep) -> Response:
    title = "Verify the ledger"
    if "verify" not in signed_in.caller.scopes:
        return await page("verify.html", title, 403, signed_in=signed_in, refused=True, lines=None)
    if request.query_params.get("run") != "1":
        return await page("verify.html", title, signed_in=signed_in, refused=False, lines=None)
    verification = await integrity.verification(signed_in.reader, Ranges())
    return GuardedStream(
        _verification_page(title, signed_in, verification),
        slot=verification.slot,
        send_timeout_s=verification.send_timeout_s,
        media_type="text/html; charset=utf-8",
    )


async def _verification_page(
    title: str, signed_in: SignedIn, verification: Verification
) -> AsyncIterator[bytes]:
    """The page as the report comes; an answer that ends early stops verifying now."""
    lines = verification.lines
    pieces = streamed("verify.html", title, signed_in=signed_in, refused=False, lines=lines)
    async with contextlib.aclosing(lines), contextlib.aclosing(pieces):
        async for piece in pieces:
            yield piece


@router.get("/export")
async def export(request: Request, signed_in: SignedInDep, reads: EventReadsDep) -> Response:
    filters = ExportFilters.model_validate(asked(request))
    return export_answer(await reads.export(signed_in.reader, filters))


def add_pages(console: FastAPI) -> None:
    console.include_router(router)
    # The home page is the console's own path, which an included router cannot have.
    console.add_api_route("", home, methods=["GET"])
