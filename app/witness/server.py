"""The witness over HTTP: `POST /add-checkpoint` (C2SP tlog-witness), `GET /<origin
hash>/checkpoint` (the latest cosigned checkpoint, for monitors), `GET /metrics` (its own
registry), `GET /healthz`.

One process: the per-log locks that make check-and-record atomic are in its memory, and the
state directory's lock keeps a second process off it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypedDict

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from app.core.tokens import bearer_matches
from app.ledger.witnessing import MAX_REQUEST_BYTES
from app.witness.config import WitnessConfig
from app.witness.cosigner import REFUSAL_REASONS, Cosigner, Refusal
from app.witness.state import WitnessState, origin_hash

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"


@dataclass
class WitnessMetrics:
    registry: CollectorRegistry
    refusals: Counter
    cosignatures: Counter

    @classmethod
    def create(cls) -> WitnessMetrics:
        registry = CollectorRegistry()
        refusals = Counter(
            "audit_witness_refusals_total",
            "Checkpoints the witness refused to cosign, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSAL_REASONS:
            refusals.labels(reason)
        cosignatures = Counter(
            "audit_witness_cosignatures_total", "Checkpoints cosigned", registry=registry
        )
        return cls(registry, refusals, cosignatures)


class WitnessLifespan(TypedDict):
    cosigner: Cosigner


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 Refusal as soon as it is over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refusal(413, "too_large", f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refusal(413, "too_large", f"body over {limit} bytes")
    return bytes(body)


def create_app(
    config: WitnessConfig, *, metrics: WitnessMetrics | None = None, metrics_token: str = ""
) -> FastAPI:
    """The witness app; its lifespan opens (and locks) the state directory."""
    counters = metrics or WitnessMetrics.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[WitnessLifespan]:
        with WitnessState.open(config.directory) as state:
            log.info(
                "witness %s (%s) of %d logs, state in %s",
                config.identity.name,
                config.identity.vkey,
                len(config.logs),
                config.directory,
            )
            yield {"cosigner": Cosigner(config, state)}

    app = FastAPI(
        title="audit-ingest witness",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        cosigner: Cosigner = request.state.cosigner
        try:
            body = await read_body(request, MAX_REQUEST_BYTES)
            lines = await cosigner.add_checkpoint(body)
        except Refusal as refusal:
            counters.refusals.labels(refusal.reason).inc()
            level = logging.ERROR if refusal.reason == "fork" else logging.WARNING
            log.log(level, "refused add-checkpoint (%s): %s", refusal.reason, refusal.message)
            # Exactly `text/x.tlog.size` for a 409 (no charset), as clients compare it.
            return Response(
                refusal.body, refusal.status, headers={"content-type": refusal.content_type}
            )
        counters.cosignatures.inc()
        return Response(lines, 200, media_type=TEXT)

    @app.get("/{hashed_origin}/checkpoint")
    async def checkpoint(hashed_origin: str, request: Request) -> Response:
        cosigner: Cosigner = request.state.cosigner
        for origin in cosigner.config.logs:
            state = cosigner.state.latest(origin)
            if state is not None and origin_hash(origin) == hashed_origin:
                return Response(state.note, 200, media_type=TEXT)
        return Response("no checkpoint cosigned for that log\n", 404, media_type=TEXT)

    @app.get("/metrics")
    async def metrics_page(request: Request) -> Response:
        given = request.headers.get("authorization")
        if metrics_token and not bearer_matches(metrics_token, given):
            return Response("metrics need the metrics token\n", 401, media_type=TEXT)
        return Response(generate_latest(counters.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok\n", media_type=TEXT)

    return app
