"""Each chain's transparency log over HTTP: consistency proofs between tree sizes, and its
tiles (C2SP tlog-tiles), for whoever holds the `log` scope. They say how many events every
tenant's traffic made, so they are not an organization's data, and need their own scope."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from app.api.errors import error_responses
from app.core.errors import ApiError, NotFound
from app.http.auth import LogReaderDep
from app.http.deps import LogReadsDep
from app.http.event_data import EventDataRoute
from app.ledger.logstore import LogRangeError

# Level 0 tiles and short proofs hold leaf hashes, which confirm a guessed event: no caching.
router = APIRouter(tags=["log"], route_class=EventDataRoute)

ChainPath = Annotated[int, Path(ge=0, le=1023, description="the chain (stream shard)")]

SizeParam = Annotated[int, Query(ge=1, le=2**62)]


class InvalidLogRange(ApiError):
    status_code = 422
    code = "invalid_range"


@router.get(
    "/log/{chain}/consistency",
    responses=error_responses(401, 403, 422, 429),
    summary="RFC 9162 consistency proof between two sizes of a chain's log (log scope)",
)
async def consistency(
    caller: LogReaderDep, log: LogReadsDep, chain: ChainPath, old: SizeParam, new: SizeParam
) -> dict[str, Any]:
    """The proof that the chain's tree of `old` leaves is a prefix of its tree of `new` leaves
    (RFC 9162 section 2.1.4; empty when they are equal), with both roots; hashes in lowercase
    hex. 0 < old <= new <= the tree size of the chain's newest ledger entry, else 422
    `invalid_range` naming the size."""
    try:
        return await log.consistency(chain, old, new)
    except LogRangeError as exc:
        raise InvalidLogRange(str(exc), details={"size": exc.size}) from exc


@router.get(
    "/log/{chain}/tile/{tile_path:path}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **error_responses(401, 403, 404, 429),
    },
    summary="A tile of a chain's log, C2SP tlog-tiles (log scope)",
)
async def tile(
    caller: LogReaderDep, log: LogReadsDep, chain: ChainPath, tile_path: str
) -> Response:
    """tile/<L>/<N>[.p/<W>] as C2SP tlog-tiles spells it: the hashes of tree level 8L, 32
    bytes each, concatenated. A full tile once the log has its 256 hashes; a partial width W
    once it has W of them; 404 for anything else."""
    try:
        content = await log.tile(chain, f"tile/{tile_path}")
    except LogRangeError as exc:
        raise NotFound(str(exc)) from exc
    return Response(content, media_type="application/octet-stream")


@router.get(
    "/log/{chain}/checkpoint",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}},
        **error_responses(401, 403, 404, 429),
    },
    summary="The chain's newest signed checkpoint, C2SP tlog-checkpoint (log scope)",
)
async def checkpoint(caller: LogReaderDep, log: LogReadsDep, chain: ChainPath) -> Response:
    """The newest checkpoint of the chain's log as a C2SP signed-note: origin
    `<AUDIT_LOG_ORIGIN>/chain/<chain>`, tree size, base64 root, then the lines `seq`, `head`
    and `sealed` of the ledger entry at that size; signed with the Ed25519 ledger key (key named
    by the origin), followed by the cosignatures of the witnesses that have cosigned it so far.
    404 while the chain has no checkpoint."""
    found = await log.checkpoint(chain)
    if found is None:
        raise NotFound(f"chain {chain} has no checkpoint yet")
    return Response(found, media_type="text/plain; charset=utf-8")
