"""The checkpointer: while a chain's log grows, at most every AUDIT_CHECKPOINT_INTERVAL_S a new
checkpoint of it is signed with the Ed25519 ledger key, stored in the database and appended
outside it, and sent to the log's witnesses (C2SP tlog-witness) until a quorum has cosigned it.

One writer process at a time does this: the one holding a session advisory lock on its own
connection (another takes over when that connection goes). A witness that refuses or does not
answer is counted (audit_witness_failures_total) and asked again next round; a checkpoint short
of a quorum is counted (audit_witness_quorum_missed_total), and audit_log_unwitnessed_seconds
says how long the log has held leaves no cosigned checkpoint covers (a threshold violation past
AUDIT_THRESHOLD_UNWITNESSED_S, app.monitor.thresholds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
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
    COSIGNED,
    COSIGNED_NOT_YET,
    LogSigner,
    append_checkpoint,
    checkpoint_of,
    entry_facts,
    store_checkpoint,
    store_cosignatures,
)
from app.ledger.logstore import MissingTile, log_consistency_proof, log_root
from app.ledger.notes import NoteSignature, cosignature_timestamp
from app.ledger.seal import MAX_CHAINS
from app.ledger.witnessing import Gathered, Witness, gather, parse_witnesses

log = logging.getLogger(__name__)

CHECKPOINT_LOCK = 0x617564697443  # pg_try_advisory_lock key: one checkpointer at a time

NEWEST_ENTRY = """
SELECT seq, head, tree_size, tree_root, sealed_at FROM audit_ledger
WHERE chain = $1 ORDER BY seq DESC LIMIT 1
"""
HIGHEST_CHAIN = "SELECT max(chain) FROM audit_ledger"


@dataclass(slots=True)
class _Signed:
    size: int
    note: str
    cosignatures: dict[Witness, NoteSignature]


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
        self._signed: dict[int, _Signed] = {}  # the newest checkpoint this process signed
        self._cosigned: dict[int, dict[Witness, int]] = {}  # the size each witness last cosigned

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
        """Sign the chain's newest entry when this process has not yet, then ask the witnesses
        that have not cosigned it. What this process signed and what each witness cosigned is
        kept here, not read back from the database: rows anyone could insert there must not
        stop or steer the checkpoints."""
        entry = await conn.fetchrow(NEWEST_ENTRY, chain)
        if entry is None or not entry["tree_size"]:
            return 0
        made = 0
        signed = self._signed.get(chain)
        if signed is None or signed.size != entry["tree_size"]:
            checkpoint = checkpoint_of(self.settings.log_origin, chain, entry)
            if not await self._log_holds(conn, chain, checkpoint):
                return 0
            note = self.signer.sign(checkpoint)
            facts = entry_facts(checkpoint)
            assert facts is not None  # checkpoint_of writes them
            await store_checkpoint(conn, chain, checkpoint, note, facts)
            await self._outside(chain, checkpoint.size, note, COSIGNED_NOT_YET)
            self.metrics.checkpoints.labels(chain=str(chain)).inc()
            signed = _Signed(checkpoint.size, note, {})
            self._signed[chain] = signed
            made = 1
        covered = await self._witnessed(conn, chain, signed, client)
        self._watch(chain, covered)
        return made

    async def _log_holds(self, conn: asyncpg.Connection, chain: int, checkpoint: Any) -> bool:
        """The entry's root is the one the log's tiles give at its size: a checkpoint signs
        what the log holds, never a row that says otherwise."""
        try:
            root = await log_root(conn, chain, checkpoint.size)
        except (MissingTile, ValueError) as exc:
            root, why = b"", str(exc)
        else:
            why = f"its root {checkpoint.root_hash.hex()} is not the tiles' {root.hex()}"
        if root == checkpoint.root_hash:
            return True
        self.metrics.writer_errors.labels(stage="checkpoint_log_mismatch").inc()
        log.error("not signing size %d of chain %d: %s", checkpoint.size, chain, why)
        return False

    async def _outside(self, chain: int, size: int, note: str, kind: str) -> None:
        try:
            await asyncio.to_thread(append_checkpoint, self.directory, chain, size, note, kind)
        except OSError as exc:
            self.metrics.writer_errors.labels(stage="checkpoint_file").inc()
            log.warning("cannot append the checkpoint to %s: %s", self.directory, exc)

    async def _witnessed(
        self, conn: asyncpg.Connection, chain: int, signed: _Signed, client: Any
    ) -> bool:
        """Ask each witness that has not cosigned this checkpoint yet, from the size it last
        cosigned here (0 when unknown: its 409 names its size, and it is asked again from
        there); True once a quorum has."""
        if not self.witnesses:
            return False
        sizes = self._cosigned.setdefault(chain, {})
        asked = [w for w in self.witnesses if w not in signed.cosignatures]
        have = len(signed.cosignatures)
        if asked and have < self.quorum:
            size = signed.size
            gathered = await gather(
                asked,
                0,
                signed.note,
                lambda old: log_consistency_proof(conn, chain, old, size),
                old_sizes={w: sizes.get(w, 0) for w in asked},
                timeout_s=self.settings.witness_timeout_s,
                client=client,
            )
            for cosigned in gathered.cosignatures:
                signed.cosignatures[cosigned.witness] = cosigned.signature
                sizes[cosigned.witness] = size
            await self._store(conn, chain, signed, gathered)
            have = len(signed.cosignatures)
            if have < self.quorum:
                self.metrics.quorum_missed.labels(chain=str(chain)).inc()
        self.metrics.checkpoint_cosignatures.labels(chain=str(chain)).set(have)
        return have >= self.quorum

    async def _store(
        self, conn: asyncpg.Connection, chain: int, signed: _Signed, gathered: Gathered
    ) -> None:
        for witness, reason in gathered.failures.items():
            self.metrics.witness_failures.labels(witness=witness.name).inc()
            log.warning(
                "witness %s did not cosign size %d of chain %d: %s",
                witness.name,
                signed.size,
                chain,
                reason,
            )
        if not gathered.cosignatures:
            return
        await store_cosignatures(
            conn,
            chain,
            signed.size,
            [
                (c.witness.key, c.signature, _at(cosignature_timestamp(c.signature)))
                for c in gathered.cosignatures
            ],
        )
        lines = "".join(sig.line for sig in signed.cosignatures.values())
        await self._outside(chain, signed.size, signed.note + lines, COSIGNED)

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
