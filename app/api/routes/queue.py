"""GET /queue/stats: the caller's organization's part of the queue; /operator/queue/stats: the
whole queue, for the service's operators. /queue/dead-letter: the caller's organization's dead
letters, listed, replayed or deleted (app.queue.dead_letters).

Dead letters hold the organization's audit events, so each of these calls is recorded in its
audit trail before it answers or acts; when it cannot be recorded, nothing happens (503).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query

from app.api.errors import error_responses
from app.api.schemas import (
    MAX_DEAD_LETTER_SELECTION,
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
from app.http.deps import RecorderDep, ResourcesDep, StreamDep
from app.http.event_data import EventDataRoute
from app.queue.admission import admit_and_queue
from app.queue.dead_letters import DeadLetter, DeadLetters, Outcome
from app.read.trail import record_read

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
        dead_letter=await DeadLetters(res.stream, org, res.macs).count(),
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
    admin: AdminDep,
    res: ResourcesDep,
    recorder: RecorderDep,
    query: Annotated[DeadLetterQuery, Query()],
) -> DeadLetterPage:
    if query.cursor is not None and not is_stream_id(query.cursor):
        raise InvalidCursor("cursor must be a dead-letter id, as next_cursor gives it")
    dead = DeadLetters(res.stream, admin.caller.organization_id, res.macs)
    letters, next_cursor = await dead.page(query.cursor, query.limit)
    listed = query.model_dump()
    await record_read(recorder, admin, "dead_letter_list", listed, len(letters))
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
    admin: AdminDep, res: ResourcesDep, recorder: RecorderDep, selection: DeadLetterSelection
) -> DeadLetterReplayed:
    caller = admin.caller
    org = caller.organization_id
    dead = DeadLetters(res.stream, org, res.macs)
    wanted, letters = await _select(dead, selection.ids, selection.all)
    events = sum(letter.events for letter in letters)

    async def put() -> Outcome:
        details = _details(selection.all, wanted, letters)
        await record_read(recorder, admin, "dead_letter_replay", details, len(letters))
        return await dead.replay(letters)

    # What moved is counted by the next poll of the queue (recount).
    done = await admit_and_queue(
        res.admission, caller.key_id, caller.scopes, org, events, put, rated=False, recount=True
    )
    return DeadLetterReplayed(
        requeued_entries=len(done.ids),
        requeued_events=done.events,
        requeued_ids=done.ids,
        not_found=_missing(wanted, [*done.ids, *done.refused]),
        refused=done.refused,
        remaining=done.remaining,
    )


@router.delete(
    "/queue/dead-letter",
    response_model=DeadLetterDeleted,
    responses=error_responses(400, 401, 403, 422, 503),
    summary="Delete your organization's dead letters (confirm=delete); their events are discarded",
)
async def delete_dead_letters(
    admin: AdminDep,
    res: ResourcesDep,
    recorder: RecorderDep,
    query: Annotated[DeadLetterDeleteQuery, Query()],
) -> DeadLetterDeleted:
    if query.confirm != "delete":
        raise ConfirmationRequired("deleting discards the events for good: add confirm=delete")
    dead = DeadLetters(res.stream, admin.caller.organization_id, res.macs)
    wanted, letters = await _select(dead, query.ids, query.all)
    details = _details(query.all, wanted, letters)
    await record_read(recorder, admin, "dead_letter_delete", details, len(letters))
    done = await dead.delete([letter.id for letter in letters])
    return DeadLetterDeleted(
        deleted_entries=len(done.ids),
        deleted_events=done.events,
        deleted_ids=done.ids,
        not_found=_missing(wanted, done.ids),
        remaining=done.remaining,
    )


async def _select(
    dead: DeadLetters, ids: list[str] | None, everything: bool
) -> tuple[list[str], list[DeadLetter]]:
    """The ids asked for (all: the oldest MAX_DEAD_LETTER_SELECTION), and the caller's items
    among them."""
    if everything:
        wanted = await dead.first_ids(MAX_DEAD_LETTER_SELECTION)
    else:
        wanted = list(dict.fromkeys(ids or ()))
    return wanted, await dead.fetch(wanted)


def _details(everything: bool, wanted: list[str], letters: list[DeadLetter]) -> dict[str, Any]:
    """What the audit record of a replay or delete names: the items, their events, and the ids
    asked for that the organization does not have."""
    event_ids = [event_id for letter in letters for event_id in letter.event_ids]
    return {
        "all": everything,
        "ids": [letter.id for letter in letters],
        "events": sum(letter.events for letter in letters),
        "event_ids": event_ids[:MAX_DEAD_LETTER_SELECTION],
        "not_found": _missing(wanted, [letter.id for letter in letters]),
    }


def _missing(wanted: list[str], found: list[str]) -> list[str]:
    present = set(found)
    return [dead_id for dead_id in wanted if dead_id not in present]
