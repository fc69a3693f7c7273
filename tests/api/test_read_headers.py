"""Every answer that can carry audit events (lists, details, proofs, PHI reports, verifications,
dead letters, exports in every format, console pages) tells caches not to keep it and browsers
not to guess its type. The app's routes are enumerated, so a new read route without the headers
fails here until it has them (or is named below as carrying no event data)."""

from __future__ import annotations

import re
import uuid

import httpx
from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Mount

from app.apikeys.keys import ALL_SCOPES, create_api_key
from app.core.metrics import Metrics
from app.ledger.signing import new_keypair
from app.writer.checkpointer import Checkpointer
from tests.conftest import Service, event, key_row_mac, stored_rows, wait_stored
from tests.console.console_client import console_client

REQUIRED = {"cache-control": "no-store", "x-content-type-options": "nosniff"}

# GET routes that never carry event data: health, metrics, the API's docs, the stylesheet, the
# console's redirect from /console/ to its home.
NO_EVENT_DATA = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/console/static/console.css",
    "/console/",
}

# Routes asked more than one way: each export format; verification run, not just offered.
VARIANTS = {
    "/events/export": ["format=ndjson", "format=csv", "format=fhir"],
    "/console/export": ["format=ndjson", "format=csv", "format=fhir"],
    "/events": ["", "limit=1"],
    "/phi-access/patients/{patient_id}": ["", "summary=true"],
    "/console/verify": ["", "run=1"],
    "/queue/dead-letter": ["include_payload=true"],
    "/console/patient": ["", "patient_id=p-1"],
    "/console/principal": ["", "principal_id=dr.smith"],
    "/log/{chain}/consistency": ["old=1&new=1"],
}


def get_routes(routes: list[BaseRoute], mounted_at: str = "") -> list[str]:
    """The path of every GET route of the app, those of included routers and of the console
    (an app of its own, mounted) too."""
    paths = []
    for route in iter_route_contexts(routes):
        if isinstance(route.original_route, Mount):
            if route.path == "/console":
                paths += get_routes(route.original_route.routes, route.path)
                continue
            assert route.path == "/docs-assets", f"a new mount: check what {route.path} serves"
        elif route.path is not None and "GET" in (route.methods or ()):
            paths.append(mounted_at + route.path)
    return paths


async def test_every_read_route_says_no_store_and_nosniff(
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
    event_id = str((await stored_rows(database_url, org))[0]["event_id"])
    samples = {
        "event_id": event_id,
        "patient_id": "p-1",
        "principal_id": "dr.smith",
        "chain": "0",
        "tile_path": "0/000.p/1",
    }
    # A checkpoint of chain 0, as the writers make them with a ledger key (this service has
    # none), so /log/{chain}/checkpoint has one to answer with.
    signing = service.settings.model_copy(update={"ledger_private_key": new_keypair()[0]})
    checkpointer = Checkpointer(signing, Metrics.create())
    await checkpointer.round()
    await checkpointer.close()
    res = service.app.state.resources
    _, key = await create_api_key(
        res.engine, org, list(ALL_SCOPES), "officer", key_row_mac(service.settings)
    )
    bearer = {"Authorization": f"Bearer {key}"}
    paths = [p for p in get_routes(service.app.routes) if p not in NO_EVENT_DATA]
    assert {"/events", "/events/export", "/console/events/{event_id}"} <= set(paths)
    missing = []
    async with console_client(service.app, key) as console:
        for template in paths:
            names = re.findall(r"{(\w+)(?::\w+)?}", template)  # {name} or {name:converter}
            assert all(n in samples for n in names), f"give a sample {names} for {template}"
            path = re.sub(r"{(\w+):\w+}", r"{\1}", template).format(**samples)
            client: httpx.AsyncClient = console if path.startswith("/console") else service.client
            for query in VARIANTS.get(template, [""]):
                url = f"{path}?{query}" if query else path
                answer = await client.get(url, headers=bearer)
                assert answer.status_code == 200, (url, answer.status_code, answer.text[:200])
                shown = {name: answer.headers.get(name) for name in REQUIRED}
                if shown != REQUIRED:
                    missing.append((url, shown))
    assert not missing, missing


async def test_error_answers_say_no_store_and_nosniff_too(service: Service, org: str) -> None:
    # An error answer comes from an exception handler, not from the route: it says the same.
    read = await service.key(org, ("read",))
    ingest = await service.key(org, ("ingest",))
    answers = {
        "unknown event": await service.client.get(f"/events/{uuid.uuid4()}", headers=read),
        "unknown proof": await service.client.get(f"/events/{uuid.uuid4()}/proof", headers=read),
        "invalid query": await service.client.get("/events?limit=zero", headers=read),
        "no key": await service.client.get("/events"),
        "wrong scope": await service.client.get("/events", headers=ingest),
        "no such path": await service.client.get("/no-such-path", headers=read),
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "unknown event": 404,
        "unknown proof": 404,
        "invalid query": 422,
        "no key": 401,
        "wrong scope": 403,
        "no such path": 404,
    }
    missing = {
        name: {header: answer.headers.get(header) for header in REQUIRED}
        for name, answer in answers.items()
        if any(answer.headers.get(header) != value for header, value in REQUIRED.items())
    }
    assert not missing, missing
