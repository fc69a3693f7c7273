"""A key lookup PostgreSQL does not answer in time (here: api_keys locked by another session)
is a 503 with Retry-After on every path that looks keys up: in the one error shape on the ingest
fast path, the framework's routes and the FHIR intake, on a page of its own on the console; never
a 500. A pool with no connection free in time is the same 503, on the API and the console."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from app.console import session as console_session
from tests.conftest import SettingsFactory, event, running

LOOKUP_TIMEOUT_S = 0.3
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def assert_retry_later(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    if answer.request.url.path.startswith("/console"):  # the console's page, not the API's JSON
        assert answer.headers["content-type"].startswith("text/html")
        assert '<p class="error" role="alert">' in answer.text and "retry later" in answer.text
        assert answer.headers["cache-control"] == "no-store"
        return
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "unavailable"


async def console_session_cookie(client: httpx.AsyncClient, key: str) -> str:
    """Signs in to the console with `key` (as the sign-in form does) and returns the cookie."""
    login = await client.post(
        "/console/login",
        content=f"api_key={key}&csrf=token",
        headers={**FORM, "Cookie": f"{console_session.LOGIN_COOKIE}=token"},
    )
    assert login.status_code == 303, login.text
    return login.cookies[console_session.COOKIE]


async def test_a_key_lookup_that_times_out_is_a_503_on_every_path(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory(run_writers=False, auth_lookup_timeout_s=LOOKUP_TIMEOUT_S)
    async with running(settings) as svc:
        ingest = await svc.key(org, ("ingest",))
        read = await svc.key(org, ("read",))
        read_key = read["Authorization"].removeprefix("Bearer ")
        session = await console_session_cookie(svc.client, read_key)
        # Answers as a client sees them: the framework's 500 too, not the exception behind it.
        transport = httpx.ASGITransport(app=svc.app, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://test")
        locker = await asyncpg.connect(database_url)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
                answers = [
                    await client.post("/events", json=event(), headers=ingest),
                    await client.post("/events/bulk", json=[event()], headers=ingest),
                    await client.post(
                        "/fhir/AuditEvent",
                        json={"resourceType": "AuditEvent"},
                        headers={**ingest, "Content-Type": "application/fhir+json"},
                    ),
                    await client.get("/events", headers=read),
                    await client.get("/queue/stats", headers=read),
                    await client.get(
                        "/console", headers={"Cookie": f"{console_session.COOKIE}={session}"}
                    ),
                    await client.post(
                        "/console/login",
                        content=f"api_key={read_key}&csrf=token",
                        headers={**FORM, "Cookie": f"{console_session.LOGIN_COOKIE}=token"},
                    ),
                ]
        finally:
            await locker.close()
            await client.aclose()
        statuses = {f"{a.request.method} {a.request.url.path}": a.status_code for a in answers}
        assert set(statuses.values()) == {503}, statuses
        for answer in answers:
            assert_retry_later(answer)
        # The lock gone, the same keys work again.
        assert (await svc.client.post("/events", json=event(), headers=ingest)).status_code == 202
        assert (await svc.client.get("/events", headers=read)).status_code == 200


async def test_a_pool_without_a_free_connection_is_a_503_on_the_api_and_the_console(
    settings_factory: SettingsFactory, org: str
) -> None:
    # The queries' pool (one connection and one overflow here) held by others: a read waits
    # the pool's 5 s for a connection, then answers 503 with Retry-After; the console on its
    # own page, since a pool timeout is sqlalchemy's TimeoutError, no ApiError.
    settings = settings_factory(run_writers=False, db_pool_size=1)
    async with running(settings) as svc:
        read = await svc.key(org, ("read",))
        session = await console_session_cookie(
            svc.client, read["Authorization"].removeprefix("Bearer ")
        )
        engine = svc.app.state.resources.engine
        async with engine.connect(), engine.connect():
            answers = await asyncio.gather(
                svc.client.get("/events", headers=read),
                svc.client.get(
                    "/console/events",
                    headers={"Cookie": f"{console_session.COOKIE}={session}"},
                ),
            )
        for answer in answers:
            assert_retry_later(answer)
        assert (await svc.client.get("/events", headers=read)).status_code == 200
