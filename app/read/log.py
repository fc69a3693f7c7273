"""Each chain's transparency log as it is served: consistency proofs between tree sizes, its
tiles (C2SP tlog-tiles) and its newest checkpoint. What they reveal (how many events every
tenant's traffic made) is the `log` scope's, not an organization's data, so no read of them is
recorded in an organization's trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import driver_connection
from app.ledger.checkpoints import log_keys, newest_served
from app.ledger.logstore import consistency_between, newest_size, tile_content


class LogReads:
    def __init__(self, engine: AsyncEngine, origin: str, public_key: str) -> None:
        self._engine = engine
        self._origin = origin
        self._public_key = public_key

    async def consistency(self, chain: int, old: int, new: int) -> dict[str, Any]:
        """The RFC 9162 proof that the tree of `old` leaves is a prefix of the tree of `new`
        (app.ledger.logstore.LogRangeError when the log has no such sizes)."""
        async with driver_connection(self._engine) as conn:
            return await consistency_between(conn, chain, old, new)

    async def tile(self, chain: int, tile_path: str) -> bytes:
        """A tile's hashes (LogRangeError when the log has no such tile yet)."""
        async with driver_connection(self._engine) as conn:
            return await tile_content(conn, chain, tile_path)

    async def checkpoint(self, chain: int) -> str | None:
        """The newest checkpoint of the chain that fits its log and is signed by the log's key,
        with the cosignatures that parse; None while it has none."""
        keys = log_keys(self._origin, chain, self._public_key)
        async with driver_connection(self._engine) as conn:
            found = await newest_served(conn, chain, await newest_size(conn, chain), keys)
        return None if found is None else found[1]
