"""GET /queue/stats: the stream as operators see it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from app.auth import Caller, require_scope
from app.main_state import resources
from app.schemas import ErrorResponse, QueueStats

router = APIRouter(tags=["operations"])
Admin = Annotated[Caller, Depends(require_scope("admin"))]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 503)
}


@router.get("/queue/stats", response_model=QueueStats, responses=ERRORS)
async def queue_stats(request: Request, caller: Admin) -> QueueStats:
    return QueueStats.model_validate(await resources(request).stream.stats())
