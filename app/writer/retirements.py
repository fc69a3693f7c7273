"""Recording key retirements in the log (app.ledger.rotation): once a key's configured retirement
has passed, an `audit.key.retired` event is sealed into every chain that has none for it yet, so
from that position on the key signs nothing that verifies, whatever time its rows carry.

Every writer process checks when it starts and then every RETIREMENT_CHECK_S; the check costs
nothing while no retirement is due, or all are known to be recorded. One process at a time
records (a PostgreSQL advisory lock, tried, never waited for): the others skip that round. The
events are sealed directly with seal_batch, not through the queue, so a retirement is in the log
once the check that found it due returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import asyncpg

from app.core.config import Settings, SigningKey
from app.core.db import connect_raw
from app.ledger.hashing import event_hash, record_from_row, verify_signature
from app.ledger.rotation import RETIREMENT_ACTION, retired_by, retirement_record
from app.ledger.seal import Sealed, seal_batch
from app.ledger.signing import PublicSigner
from app.ledger.sql import CHAINS, RECORDED_RETIREMENTS, TRY_LOCK
from app.writer.batch import record_row

log = logging.getLogger(__name__)

RETIREMENT_CHECK_S = 60.0

# How long what was seen recorded is believed without looking in the database again.
RELOOK_S = 3600.0

RETIREMENT_LOCK = 0x6B6579726574  # "keyret": apart from the chains' locks (app.ledger.seal)

Recorded = tuple[int, str, str]  # chain, ring, key id


def due_retirements(settings: Settings, now: datetime) -> list[tuple[str, SigningKey]]:
    """(ring, key) of every configured key whose retirement has passed."""
    rings = (("events", settings.signing_key_ring), ("ledger", settings.ledger_key_ring))
    return [(ring, key) for ring, keys in rings for key in keys if key.retired_by(now)]


class RetirementRecorder:
    """Seals the retirements due into the chains that lack them; remembers what it has seen
    recorded, so that a check finding nothing new costs no database round trip."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._recorded: set[Recorded] = set()
        self._looked_at = time.monotonic()
        self._public_signer = (
            PublicSigner(settings.ledger_private_key) if settings.ledger_private_key else None
        )

    async def check(self, now: datetime | None = None) -> list[Sealed]:
        """Record what is due by `now` (the clock's time when None); returns the batches
        sealed (none when nothing was missing, or another process holds the lock)."""
        moment = now or datetime.now(UTC)
        due = due_retirements(self.settings, moment)
        chains = range(self.settings.stream_shards)
        if time.monotonic() - self._looked_at > RELOOK_S:  # a record cut out is sealed again
            self._recorded.clear()
            self._looked_at = time.monotonic()
        if {(c, ring, key.key_id) for c in chains for ring, key in due} <= self._recorded:
            return []
        conn = await connect_raw(self.settings)
        try:
            return await self._record(conn, due, moment)
        finally:
            await conn.close()

    async def _record(
        self, conn: asyncpg.Connection, due: list[tuple[str, SigningKey]], now: datetime
    ) -> list[Sealed]:
        settings = self.settings
        sealed: list[Sealed] = []
        async with conn.transaction():
            if not await conn.fetchval(TRY_LOCK, RETIREMENT_LOCK):
                return []  # another writer process is recording now
            in_ledger = [r[0] for r in await conn.fetch(CHAINS)]
            chains = sorted(set(range(settings.stream_shards)) | set(in_ledger))
            recorded = await self._already(conn, now)
            for chain in chains:
                missing = [(r, k) for r, k in due if (chain, r, k.key_id) not in recorded]
                if not missing:
                    continue
                rows = [
                    record_row(
                        retirement_record(ring, key, settings.operations_org, now),
                        settings.signing_key_ring[0],
                    )
                    for ring, key in missing
                ]
                ledger_key = settings.ledger_key_ring[0]
                batch = await seal_batch(conn, rows, ledger_key, self._public_signer, chain)
                sealed.append(batch)
                recorded |= {(chain, ring, key.key_id) for ring, key in missing}
        self._recorded |= recorded  # committed
        for batch in sealed:
            log.info(
                "recorded %d key retirements in chain %d at seq %d",
                batch.count,
                batch.chain,
                batch.seq,
            )
        return sealed

    async def _already(self, conn: asyncpg.Connection, now: datetime) -> set[Recorded]:
        """The retirements sealed into each chain already: events of the operations
        organization whose hash and signature check with an event key not retired by `now`
        (a row inserted around the writers does not stand for one)."""
        settings = self.settings
        rows = await conn.fetch(RECORDED_RETIREMENTS, settings.operations_org, RETIREMENT_ACTION)
        valid = {k.key_id: k for k in settings.signing_key_ring if not k.retired_by(now)}
        return set(_checked(rows, valid))


def _checked(rows: Iterable[asyncpg.Record], keys: dict[str, SigningKey]) -> Iterable[Recorded]:
    for row in rows:
        named = retired_by(row)
        stored = bytes(row["hash"])
        if named is None or row["key_id"] not in keys:
            continue
        if event_hash(record_from_row(row)) != stored:
            continue
        if verify_signature(stored, bytes(row["signature"]), row["key_id"], keys):
            yield (row["chain"], *named)
