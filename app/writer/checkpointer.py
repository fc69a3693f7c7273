"""The checkpointer: while a chain's log grows, at most every AUDIT_CHECKPOINT_INTERVAL_S a new
checkpoint of it is signed with the Ed25519 ledger key, stored in the database and appended
outside it, and sent to the log's witnesses (C2SP tlog-witness) until a quorum has cosigned it.

One writer process at a time does this: the one holding a session advisory lock on its own
connection (another takes over when that connection goes). A witness that refuses or does not
answer is counted (audit_witness_failures_total) and asked again next round; a checkpoint short
of a quorum is counted (audit_witness_quorum_missed_total), and audit_log_unwitnessed_seconds
says how long the log has held leaves no cosigned checkpoint covers (a threshold violation past
AUDIT_THRESHOLD_UNWITNESSED_S, app.api.performance).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.core.config import Settings
from app.core.db import connect_raw
from app.core.metrics import Metrics
from app.core.tasks import wait_or_stop
from app.ledger.checkpoints import (
    LogSigner,
    append_checkpoint,
    checkpoint_of,
    cosigned_note,
    cosigned_sizes,
    entry_facts,
    newest_checkpoint,
    store_checkpoint,
    store_cosignatures,
)
from app.ledger.logstore import log_consistency_proof
from app.ledger.notes import cosignature_timestamp
from app.ledger.seal import MAX_CHAINS
from app.ledger.witnessing import Gathered, gather, parse_witnesses

log = logging.getLogger(__name__)

CHECKPOINT_LOCK = 0x617564697443  # pg_try_advisory_lock key: one checkpointer at a time

NEWEST_ENTRY = """
SELECT seq, head, tree_size, tree_root, sealed_at FROM audit_ledger
WHERE chain = $1 ORDER BY seq DESC LIMIT 1
"""
HIGHEST_CHAIN = "SELECT max(chain) FROM audit_ledger"


class Checkpointer:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.signer = LogSigner(settings.log_origin, settings.ledger_private_key)
        self.witnesses = parse_witnesses(settings.witnesses)
        self.quorum = settings.witness_quorum if self.witnesses else 0
        self.directory = Path(settings.checkpoint_dir)
        self._conn: asyncpg.Connection | None = None
        self._chains = settings.stream_shards
        self._unwitnessed_since: dict[int, float] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        interval = self.settings.checkpoint_interval_s
        try:
            async with httpx.AsyncClient(
                timeout=self.settings.witness_timeout_s, follow_redirects=False
            ) as client:
                while not stopping.is_set():
                    try:
                        await self.round(client)
                    except Exception as exc:
                        self.metrics.writer_errors.labels(stage="checkpoint").inc()
                        log.warning("checkpoint round failed: %s: %s", type(exc).__name__, exc)
                        await self._drop_connection()
                    await wait_or_stop(stopping, interval)
        finally:
            await self._drop_connection()

    async def close(self) -> None:
        """Give up the checkpoint lock (run() does on its way out)."""
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close(timeout=2)

    async def _leader(self) -> asyncpg.Connection | None:
        """Our connection once it holds the checkpoint lock (None: another process holds it)."""
        if self._conn is None:
            conn = await connect_raw(self.settings)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", CHECKPOINT_LOCK):
                await conn.close()
                return None
            self._conn = conn
            highest = await conn.fetchval(HIGHEST_CHAIN)
            self._chains = max(self.settings.stream_shards, (highest or 0) + 1)
            log.info("this process makes the log's checkpoints")
        return self._conn

    async def round(self, client: httpx.AsyncClient | None = None) -> int:
        """One pass over the chains; returns how many checkpoints it signed."""
        conn = await self._leader()
        if conn is None:
            return 0
        made = 0
        for chain in range(min(self._chains, MAX_CHAINS)):
            made += await self._chain(conn, chain, client)
        return made

    async def _chain(self, conn: asyncpg.Connection, chain: int, client: Any) -> int:
        entry = await conn.fetchrow(NEWEST_ENTRY, chain)
        if entry is None or not entry["tree_size"]:
            return 0
        last = await newest_checkpoint(conn, chain)
        made = 0
        if last is None or last["tree_size"] < entry["tree_size"]:
            checkpoint = checkpoint_of(self.settings.log_origin, chain, entry)
            note = self.signer.sign(checkpoint)
            facts = entry_facts(checkpoint)
            assert facts is not None  # checkpoint_of writes them
            await store_checkpoint(conn, chain, checkpoint, note, facts)
            await self._outside(chain, checkpoint.size, note)
            self.metrics.checkpoints.labels(chain=str(chain)).inc()
            size, made = checkpoint.size, 1
        else:
            size, note = last["tree_size"], last["note"]
        covered = await self._witnessed(conn, chain, size, note, client)
        self._watch(chain, covered)
        return made

    async def _outside(self, chain: int, size: int, note: str) -> None:
        try:
            await asyncio.to_thread(append_checkpoint, self.directory, chain, size, note)
        except OSError as exc:
            self.metrics.writer_errors.labels(stage="checkpoint_file").inc()
            log.warning("cannot append the checkpoint to %s: %s", self.directory, exc)

    async def _witnessed(
        self, conn: asyncpg.Connection, chain: int, size: int, note: str, client: Any
    ) -> bool:
        """Ask each witness that has not cosigned this checkpoint yet; True once a quorum has."""
        if not self.witnesses:
            return False
        sizes = await cosigned_sizes(conn, chain)
        asked = [w for w in self.witnesses if sizes.get(w.key.vkey, 0) < size]
        have = len(self.witnesses) - len(asked)
        if asked and have < self.quorum:
            gathered = await gather(
                asked,
                0,
                note,
                lambda old: log_consistency_proof(conn, chain, old, size),
                old_sizes={w: sizes.get(w.key.vkey, 0) for w in asked},
                timeout_s=self.settings.witness_timeout_s,
                client=client,
            )
            await self._store(conn, chain, size, note, gathered)
            have += len(gathered.cosignatures)
            if have < self.quorum:
                self.metrics.quorum_missed.labels(chain=str(chain)).inc()
        self.metrics.checkpoint_cosignatures.labels(chain=str(chain)).set(have)
        return have >= self.quorum

    async def _store(
        self, conn: asyncpg.Connection, chain: int, size: int, note: str, gathered: Gathered
    ) -> None:
        for witness, reason in gathered.failures.items():
            self.metrics.witness_failures.labels(witness=witness.name).inc()
            log.warning(
                "witness %s did not cosign size %d of chain %d: %s",
                witness.name,
                size,
                chain,
                reason,
            )
        if not gathered.cosignatures:
            return
        await store_cosignatures(
            conn,
            chain,
            size,
            [
                (c.witness.key, c.signature, _at(cosignature_timestamp(c.signature)))
                for c in gathered.cosignatures
            ],
        )
        await self._outside(chain, size, await cosigned_note(conn, chain, size, note))

    def _watch(self, chain: int, covered: bool) -> None:
        now = time.monotonic()
        if covered or not self.witnesses:
            self._unwitnessed_since.pop(chain, None)
            self.metrics.unwitnessed_seconds.labels(chain=str(chain)).set(0)
            return
        since = self._unwitnessed_since.setdefault(chain, now)
        self.metrics.unwitnessed_seconds.labels(chain=str(chain)).set(now - since)


def _at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
