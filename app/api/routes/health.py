"""Liveness, readiness and Prometheus metrics: no API key (they carry no PHI)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.errors import error_response, error_responses
from app.api.schemas import Readiness
from app.core.tokens import bearer_matches
from app.http.deps import ResourcesDep
from app.wiring import readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses=error_responses(503))
async def readyz(res: ResourcesDep) -> Response:
    checks = await readiness(res)
    if all(v == "ok" for v in checks.values()):
        return Response(
            b'{"status":"ready","checks":' + orjson.dumps(checks) + b"}",
            media_type="application/json",
        )
    return error_response(503, "not_ready", "a dependency is failing", checks)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, res: ResourcesDep) -> Response:
    token = res.settings.metrics_token
    if token and not bearer_matches(token, request.headers.get("authorization")):
        return error_response(401, "unauthenticated", "metrics token required")
    return Response(generate_latest(res.metrics.registry), media_type=CONTENT_TYPE_LATEST)
