"""GET /queue/stats: the caller's organization's part of the queue; /operator/queue/stats: the
whole queue, for the service's operators. /queue/dead-letter: the caller's organization's dead
letters, listed, replayed or deleted (app.intake.dead_letters, which records each in the
organization's audit trail before it answers or acts).
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query

from app.api.errors import error_responses
from app.api.schemas import (
    DeadLetterDeleted,
    DeadLetterDeleteQuery,
    DeadLetterOut,
    DeadLetterPage,
    DeadLetterQuery,
    DeadLetterReplayed,
    DeadLetterSelection,
    OrgQueueStats,
    QueueStats,
    is_stream_id,
)
from app.core.errors import ApiError, InvalidCursor
from app.http.auth import AdminDep, OperatorDep
from app.http.deps import DeadLettersDep, ResourcesDep, StreamDep
from app.http.event_data import EventDataRoute
from app.queue.dead_letters import DeadLetter

router = APIRouter(tags=["operations"], route_class=EventDataRoute)  # dead letters


class ConfirmationRequired(ApiError):
    status_code = 400
    code = "confirmation_required"


@router.get(
    "/queue/stats",
    response_model=OrgQueueStats,
    responses=error_responses(401, 403, 503),
    summary="Your organization's part of the queue",
)
async def queue_stats(admin: AdminDep, res: ResourcesDep) -> OrgQueueStats:
    org = admin.caller.organization_id
    queued = (await res.stream.queued_by_organization()).get(org, 0)
    settings = res.settings
    return OrgQueueStats(
        organization=org,
        queued_events=queued,
        queue_quota=res.admission.org_quota,
        dead_letter=await res.dead_letters.of(org).count(),
        rate_limit_key_events=settings.rate_limit_key_events,
        rate_limit_org_events=settings.rate_limit_org_events,
    )


@router.get(
    "/operator/queue/stats",
    response_model=QueueStats,
    responses=error_responses(401, 403, 503),
    summary="The whole queue, every tenant together (operator scope)",
)
async def service_queue_stats(operator: OperatorDep, stream: StreamDep) -> QueueStats:
    return QueueStats.model_validate(await stream.stats())


@router.get(
    "/queue/dead-letter",
    response_model=DeadLetterPage,
    responses=error_responses(400, 401, 403, 422, 503),
    summary="Your organization's dead letters, oldest first",
)
async def list_dead_letters(
    admin: AdminDep, desk: DeadLettersDep, query: Annotated[DeadLetterQuery, Query()]
) -> DeadLetterPage:
    if query.cursor is not None and not is_stream_id(query.cursor):
        raise InvalidCursor("cursor must be a dead-letter id, as next_cursor gives it")
    letters, next_cursor = await desk.page(admin, query.cursor, query.limit, query.model_dump())
    items = [_out(letter, query.include_payload) for letter in letters]
    return DeadLetterPage(items=items, next_cursor=next_cursor)


def _out(letter: DeadLetter, include_payload: bool) -> DeadLetterOut:
    payload = None
    if include_payload:
        value = orjson.loads(letter.payload)
        payload = value if isinstance(value, list) else [value]
    return DeadLetterOut(
        id=letter.id,
        source=letter.source,
        error=letter.error,
        deliveries=letter.deliveries,
        replays=letter.replays,
        events=letter.events,
        event_ids=letter.event_ids,
        first_failed=letter.first_failed,
        failed_at=letter.failed_at,
        payload=payload,
    )


@router.post(
    "/queue/dead-letter/replay",
    response_model=DeadLetterReplayed,
    responses=error_responses(401, 403, 422, 503),
    summary="Send your organization's dead letters back to the writers",
)
async def replay_dead_letters(
    admin: AdminDep, desk: DeadLettersDep, selection: DeadLetterSelection
) -> DeadLetterReplayed:
    done = await desk.replay(admin, selection.ids, selection.all)
    return DeadLetterReplayed(
        requeued_entries=len(done.outcome.ids),
        requeued_events=done.outcome.events,
        requeued_ids=done.outcome.ids,
        not_found=done.not_found,
        refused=done.outcome.refused,
        remaining=done.outcome.remaining,
    )


@router.delete(
    "/queue/dead-letter",
    response_model=DeadLetterDeleted,
    responses=error_responses(400, 401, 403, 422, 503),
    summary="Delete your organization's dead letters (confirm=delete); their events are discarded",
)
async def delete_dead_letters(
    admin: AdminDep, desk: DeadLettersDep, query: Annotated[DeadLetterDeleteQuery, Query()]
) -> DeadLetterDeleted:
    if query.confirm != "delete":
        raise ConfirmationRequired("deleting discards the events for good: add confirm=delete")
    done = await desk.delete(admin, query.ids, query.all)
    return DeadLetterDeleted(
        deleted_entries=len(done.outcome.ids),
        deleted_events=done.outcome.events,
        deleted_ids=done.outcome.ids,
        not_found=done.not_found,
        remaining=done.outcome.remaining,
    )
