"""Liveness, readiness and Prometheus metrics: no API key (they carry no PHI)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.errors import error_response, error_responses
from app.api.schemas import Readiness
from app.core.tokens import bearer_matches
from app.http.deps import ResourcesDep

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        ok = await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except Exception as exc:
        return name, f"failing: {type(exc).__name__}"
    return name, "ok" if ok else "failing"


async def _database_ok(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(text("SELECT 1")))


@router.get("/readyz", response_model=Readiness, responses=error_responses(503))
async def readyz(res: ResourcesDep) -> Response:
    checks = dict(
        await asyncio.gather(
            _check("redis", res.redis.ping()),
            _check("postgres", _database_ok(res.engine)),
            _check("writer_heartbeat", res.stream.writer_alive()),
        )
    )
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
