"""What an unauthenticated or ordinary caller sends cannot make the console fail with a 500: odd
CSRF values, identifiers with a NUL or too long, dates and cursors that are no such thing. Each
gets a 4xx and the console's own page (the API answers 422 for the same identifiers)."""

from __future__ import annotations

import base64

import httpx
import orjson
import pytest

from app.apikeys.keys import create_api_key
from tests.conftest import Service, event, key_row_mac, wait_stored
from tests.console.console_client import CSRF_FIELD, console_client

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def b64(value: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


NUL_KEY_CURSOR = b64(["key", "a\x00b"])
NUL_CURSOR = b64(["2026-11-10T10:00:00.000000Z", "a\x00b", "desc"])
LONG = "p" * 300

# Every query parameter a console page reads, with values the API refuses.
PROBES = [
    "/console/patient?patient_id=a%00b",
    "/console/principal?principal_id=a%00b",
    f"/console/patient?patient_id={LONG}",
    f"/console/principal?principal_id={LONG}",
    "/console/patient?patient_id=p-1&start=yesterday",
    "/console/patient?patient_id=p-1&end=10000-01-01T00:00:00Z",
    "/console/patient?patient_id=p-1&start=2026-11-10T10:00:00",  # no offset
    "/console/patient?patient_id=p-1&cursor=%00%FF",
    f"/console/patient?patient_id=p-1&cursor={NUL_CURSOR}",
    f"/console/patient?patient_id=p-1&summary_cursor={NUL_KEY_CURSOR}",
    "/console/patient?patient_id=p-1&summary_cursor=%E2%82%AC",
    f"/console/principal?principal_id=dr.smith&summary_cursor={NUL_KEY_CURSOR}",
    "/console/events?principal_id=a%00b",
    "/console/events?patient_id=a%00b&correlation_id=c%00",
    "/console/events?action_prefix=%00",
    "/console/events?cursor=%00",
    f"/console/events?cursor={NUL_CURSOR}",
    "/console/events?start=2026-13-45T00:00:00Z",
    "/console/events?limit=-1",
    "/console/events?order=sideways",
    "/console/events?nonsense=1",
    "/console/break-glass?cursor=x",
    "/console/asking?start=%00",
    "/console/events/%00",
    "/console/events/not-a-uuid",
    f"/console/events/{'9' * 400}",
    "/console/export?patient_id=a%00b",
    "/console/export?format=xml",
    "/console/export?cursor=abc",
]


async def test_the_api_refuses_the_same_identifiers(service: Service, org: str) -> None:
    headers = await service.key(org)
    for path in ("/phi-access/patients/a%00b", f"/phi-access/principals/{LONG}"):
        answer = await service.client.get(path, headers=headers)
        assert answer.status_code == 422, (path, answer.text)
    for cursor in (NUL_KEY_CURSOR, NUL_CURSOR):
        answer = await service.client.get(
            "/phi-access/patients/p-1", params={"summary": "true", "cursor": cursor},
            headers=headers,
        )  # fmt: skip
        assert answer.status_code in {400, 422}, answer.text


async def test_odd_console_parameters_get_a_page_not_a_500(
    service: Service, org: str, database_url: str
) -> None:
    writer = await service.key(org, ("ingest",))
    posted = await service.client.post(
        "/events/bulk",
        json=[event(patient_id="p-1", data_classification="PHI") for _ in range(3)],
        headers=writer,
    )
    assert posted.status_code == 202
    await wait_stored(database_url, org, 3)
    res = service.app.state.resources
    _, key = await create_api_key(
        res.engine, org, ["read"], "officer", key_row_mac(service.settings)
    )
    failed = []
    async with console_client(service.app, key) as console:
        for path in PROBES:
            answer = await console.get(path)
            shown = answer.headers.get("content-type", "")
            if not (400 <= answer.status_code < 500 and shown.startswith("text/html")):
                failed.append((path, answer.status_code, answer.text[:120]))
    assert not failed, failed


@pytest.mark.parametrize(
    ("csrf", "cookie"),
    [
        ("%C3%A9t%C3%A9", "plain-token"),  # non-ASCII in the form
        ("plain-token", "\xe9t\xe9"),  # non-ASCII in the cookie (headers are latin-1)
        ("%ED%A0%80", "plain-token"),  # not UTF-8 at all
        ("", ""),
    ],
)
async def test_sign_in_with_an_odd_csrf_value_is_refused_not_a_500(
    service: Service, csrf: str, cookie: str
) -> None:
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://console.test") as client:
        answer = await client.post(
            "/console/login",
            content=f"csrf={csrf}&api_key=whatever",
            headers=[
                (b"content-type", FORM["Content-Type"].encode()),
                (b"cookie", f"audit_console_login={cookie}".encode("latin-1")),
            ],
        )
        assert answer.status_code == 403, answer.text
        assert "The form expired" in answer.text


async def test_sign_out_with_an_odd_csrf_value_is_refused_not_a_500(
    service: Service, org: str
) -> None:
    res = service.app.state.resources
    _, key = await create_api_key(
        res.engine, org, ["read"], "officer", key_row_mac(service.settings)
    )
    async with console_client(service.app, key) as console:
        answer = await console.post("/console/logout", content="csrf=%C3%A9", headers=FORM)
        assert answer.status_code == 403, answer.text
        home = await console.get("/console")
        assert home.status_code == 200  # still signed in
        token = CSRF_FIELD.search(home.text)
        assert token is not None
        out = await console.post("/console/logout", data={"csrf": token[1]})
        assert out.status_code == 303
