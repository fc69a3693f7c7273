"""Each chain's transparency log in PostgreSQL: built by migration 0012 from batches sealed
before it, appended to by seal_batch, proved from its tiles, and held to the events by
verification (a changed tile, tree root or frontier is named); the tiles only ever grow."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from alembic import command
from app.cli.migrate import alembic_config, migrate
from app.core.config import SigningKey
from app.events.model import EventIn
from app.ledger.chain import genesis_head, ledger_head, sign_head
from app.ledger.logstore import (
    log_consistency_proof,
    log_consistency_proofs,
    log_inclusion_proof,
    log_root,
    read_tile,
    unpack_frontier,
)
from app.ledger.merkle import leaf_hash, merkle_root
from app.ledger.prune import pack_leaves
from app.ledger.seal import seal_batch
from app.ledger.tlog import (
    frontier_root,
    tile_hashes,
    tiles_for_size,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from app.ledger.verify import Verifier, verify_chains
from app.store.models import AUDIT_COLUMNS
from app.writer.batch import record_row
from tests.conftest import SealedFactory, make_settings, with_database
from tests.ledger.log_tamper import rewrite_tiles

KEY = SigningKey("log-test", b"t" * 32)
RING = {KEY.key_id: KEY}


def make_rows(count: int, tag: str) -> list[tuple[object, ...]]:
    moment = datetime(2026, 11, 20, tzinfo=UTC)
    rows = []
    for i in range(count):
        event = EventIn.model_validate(
            {
                "action": "fhir.patient.read",
                "status": "success",
                "principal_id": f"{tag}-{i}",
                "timestamp": moment + timedelta(seconds=i),
            }
        )
        received = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        rows.append(record_row(event.to_record("org-log", received), KEY))
    return rows


async def seal_v1(conn: asyncpg.Connection, rows: list[tuple[object, ...]], chain: int) -> None:
    """A batch sealed as seal_batch did before the log (schema 0011): v1 head, no tree."""
    async with conn.transaction():
        batch_id = await conn.fetchval("SELECT nextval('audit_batch_id_seq')")
        records = [(*row, batch_id, i) for i, row in enumerate(rows)]
        await conn.copy_records_to_table("audit_log", records=records, columns=AUDIT_COLUMNS)
        newest = await conn.fetchrow(
            "SELECT seq, head FROM audit_ledger WHERE chain = $1 ORDER BY seq DESC LIMIT 1", chain
        )
        seq = newest["seq"] + 1 if newest else 1
        prev = bytes(newest["head"]) if newest else genesis_head(chain)
        digests = [r[AUDIT_COLUMNS.index("hash")] for r in rows]
        times = [r[AUDIT_COLUMNS.index("timestamp")] for r in rows]
        assert all(isinstance(d, bytes) for d in digests)
        assert all(isinstance(t, datetime) for t in times)
        first, last = min(times), max(times)  # type: ignore[type-var]
        root = merkle_root(digests)  # type: ignore[arg-type]
        head = ledger_head(prev, seq, root, len(rows), first, last)  # type: ignore[arg-type]
        await conn.execute(
            """INSERT INTO audit_ledger (chain, seq, batch_id, event_count, merkle_root,
                   first_timestamp, last_timestamp, prev_head, head, key_id, signature)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
            chain,
            seq,
            batch_id,
            len(rows),
            root,
            first,
            last,
            prev,
            head,
            KEY.key_id,
            sign_head(head, KEY),
        )


async def chain_leaves(conn: asyncpg.Connection, chain: int) -> list[bytes]:
    """Every event's leaf hash of the chain, in sealed order, read from the events."""
    rows = await conn.fetch(
        """SELECT a.hash FROM audit_log a JOIN audit_ledger l USING (batch_id)
           WHERE l.chain = $1 ORDER BY l.seq, a.leaf_index""",
        chain,
    )
    return [leaf_hash(bytes(r["hash"])) for r in rows]


async def assert_log_is(conn: asyncpg.Connection, chain: int, leaves: list[bytes]) -> None:
    """Every entry's tree fields are those of the log over `leaves`, and the tiles hold it."""
    entries = await conn.fetch("SELECT * FROM audit_ledger WHERE chain = $1 ORDER BY seq", chain)
    size = 0
    for entry in entries:
        size += entry["event_count"]
        assert entry["tree_size"] == size
        assert bytes(entry["tree_root"]) == tree_hash(leaves[:size])
        frontier = unpack_frontier(size, entry["frontier"])
        assert frontier_root(frontier) == bytes(entry["tree_root"])
    assert size == len(leaves)

    def subtree(level: int, index: int) -> bytes:
        return tree_hash(leaves[index << level : (index + 1) << level])

    for tile in tiles_for_size(size):
        stored = await read_tile(conn, chain, tile.level, tile.index, size)
        assert stored == tile_hashes(tile, subtree), tile
    assert await log_root(conn, chain, size) == tree_hash(leaves)


@pytest.fixture
async def scratch(
    database_url: str, redis_url: str
) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    admin = await asyncpg.connect(database_url)
    name = f"audit_log_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(database_url, name)
    conn = await asyncpg.connect(url)
    try:
        yield url, conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_migration_puts_old_batches_into_the_log_and_new_ones_append(
    scratch: tuple[str, asyncpg.Connection], redis_url: str
) -> None:
    url, conn = scratch
    settings = make_settings(url, redis_url)
    await asyncio.to_thread(migrate, settings, "0011")
    for n, (chain, size) in enumerate([(0, 3), (1, 4), (0, 300), (0, 5), (1, 2), (0, 1)]):
        await seal_v1(conn, make_rows(size, f"old{n}"), chain)
    await asyncio.to_thread(migrate, settings)

    for chain in (0, 1):
        leaves = await chain_leaves(conn, chain)
        await assert_log_is(conn, chain, leaves)
        for index in range(0, len(leaves), 7):
            proof = await log_inclusion_proof(conn, chain, index, len(leaves))
            verify_inclusion(index, len(leaves), leaves[index], proof, tree_hash(leaves))
    versions = await conn.fetch("SELECT DISTINCT head_version FROM audit_ledger")
    assert [r[0] for r in versions] == [1]
    # Down and up again (no v2 head yet): the same log.
    await asyncio.to_thread(command.downgrade, alembic_config(settings), "0011")
    assert await conn.fetchval("SELECT to_regclass('audit_log_tiles')") is None
    await asyncio.to_thread(migrate, settings)
    await assert_log_is(conn, 1, await chain_leaves(conn, 1))

    # New batches append to the migrated log, with v3 heads (committing to the log and to
    # sealed_at).
    for size in (256, 9):
        await seal_batch(conn, make_rows(size, f"new{size}"), KEY, None, chain=0)
    leaves = await chain_leaves(conn, 0)
    assert len(leaves) == 309 + 265
    await assert_log_is(conn, 0, leaves)
    newest = await conn.fetchrow(
        "SELECT * FROM audit_ledger WHERE chain = 0 ORDER BY seq DESC LIMIT 1"
    )
    assert newest["head_version"] == 3
    sizes = [r[0] for r in await conn.fetch("SELECT tree_size FROM audit_ledger WHERE chain = 0")]
    for old in sizes:
        for new in sizes:
            if old <= new:
                proof = await log_consistency_proof(conn, 0, old, new)
                verify_consistency(
                    old, new, tree_hash(leaves[:old]), tree_hash(leaves[:new]), proof
                )
    report = await verify_chains(conn, Verifier(RING, ledger_keys=RING))
    assert report.intact, list(report.findings)

    # Entries with v3 heads: the schema before cannot verify them, so no downgrade.
    with pytest.raises(Exception, match="v3 heads"):
        await asyncio.to_thread(command.downgrade, alembic_config(settings), "0011")


async def test_migration_takes_pruned_leaves_from_their_records(
    scratch: tuple[str, asyncpg.Connection], redis_url: str
) -> None:
    """A batch partly pruned by retention keeps its place through its recorded hashes; one
    pruned whole left none and adds no leaves."""
    url, conn = scratch
    settings = make_settings(url, redis_url)
    await asyncio.to_thread(migrate, settings, "0011")
    for n, size in enumerate([4, 6, 3, 5]):
        await seal_v1(conn, make_rows(size, f"p{n}"), 0)
    batches = [r[0] for r in await conn.fetch("SELECT batch_id FROM audit_ledger ORDER BY seq")]
    gone = await conn.fetch(
        "SELECT leaf_index, hash FROM audit_log WHERE batch_id = $1 AND leaf_index < 2",
        batches[1],
    )
    recorded = pack_leaves({r["leaf_index"]: bytes(r["hash"]) for r in gone})
    await conn.execute("DELETE FROM audit_log WHERE batch_id = $1 AND leaf_index < 2", batches[1])
    await conn.execute("DELETE FROM audit_log WHERE batch_id = $1", batches[2])
    await conn.execute(
        """INSERT INTO audit_pruned_batches (batch_id, pruned_events, leaves, key_id, signature)
           VALUES ($1, 2, $2, 'k', ''), ($3, 3, NULL, 'k', '')""",
        batches[1],
        recorded,
        batches[2],
    )
    expected = await conn.fetch(
        """SELECT hash FROM audit_log WHERE batch_id = ANY($1::bigint[])
           ORDER BY batch_id, leaf_index""",
        [batches[0]],
    )
    leaves = [leaf_hash(bytes(r["hash"])) for r in expected]
    leaves += [leaf_hash(bytes(r["hash"])) for r in sorted(gone, key=lambda r: r[0])]
    leaves += [
        leaf_hash(bytes(r["hash"]))
        for r in await conn.fetch(
            "SELECT hash FROM audit_log WHERE batch_id = $1 ORDER BY leaf_index", batches[1]
        )
    ]
    after_second = len(leaves)
    leaves += [
        leaf_hash(bytes(r["hash"]))
        for r in await conn.fetch(
            "SELECT hash FROM audit_log WHERE batch_id = $1 ORDER BY leaf_index", batches[3]
        )
    ]
    await asyncio.to_thread(migrate, settings)
    entries = await conn.fetch("SELECT * FROM audit_ledger ORDER BY seq")
    assert [e["tree_size"] for e in entries] == [4, 10, 10, 15]
    assert after_second == 10
    assert bytes(entries[-1]["tree_root"]) == tree_hash(leaves)
    assert await log_root(conn, 0, 15) == tree_hash(leaves)


async def test_sealed_batches_are_the_log(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 300, 4])
    leaves = await chain_leaves(sealed.conn, 0)
    assert len(leaves) == 307
    await assert_log_is(sealed.conn, 0, leaves)
    versions = {r[0] for r in await sealed.conn.fetch("SELECT head_version FROM audit_ledger")}
    assert versions == {3}
    assert (await sealed.verify()).intact


async def test_consistency_proofs_to_one_size_are_read_together(
    sealed_factory: SealedFactory,
) -> None:
    """A bundle's proofs, from each entry's size to its checkpoint's: one read of the tiles
    gives the proofs one read each gives."""
    sealed = await sealed_factory([3, 300, 4, 1])
    leaves = await chain_leaves(sealed.conn, 0)
    sizes = [1, 3, 256, 303, 307, 308]
    assert len(leaves) == 308
    together = await log_consistency_proofs(sealed.conn, 0, sizes, 308)
    assert together == [await log_consistency_proof(sealed.conn, 0, old, 308) for old in sizes]
    for old, proof in zip(sizes, together, strict=True):
        verify_consistency(old, 308, tree_hash(leaves[:old]), tree_hash(leaves), proof)


def checks(report: object) -> set[str]:
    return {f.check for f in report.findings}  # type: ignore[attr-defined]


async def test_a_changed_tile_is_named(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 300, 4])
    await rewrite_tiles(
        sealed.conn,
        """UPDATE audit_log_tiles SET hashes = overlay(hashes PLACING '\\x00'::bytea FROM 40)
           WHERE chain = 0 AND level = 0 AND idx = 0""",
    )
    assert checks(await sealed.verify()) == {"log_tile_mismatch"}


async def test_an_extended_or_extra_tile_is_named(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 4])
    await sealed.conn.execute(
        "UPDATE audit_log_tiles SET hashes = hashes || $1 WHERE level = 0 AND idx = 0",
        bytes(32),
    )  # growing is what the trigger lets through: verification still sees it
    assert checks(await sealed.verify()) == {"log_tile_mismatch"}


async def test_a_changed_tree_root_is_named(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 4, 5])
    async with sealed.conn.transaction():
        await sealed.conn.execute("SET LOCAL session_replication_role = replica")
        await sealed.conn.execute("UPDATE audit_ledger SET tree_root = $1 WHERE seq = 2", bytes(32))
    found = await sealed.verify()
    # The v2 head commits to the root: the head no longer recomputes either.
    assert checks(found) == {"log_root_mismatch", "ledger_head_mismatch"}
    assert {f.seq for f in found.findings} == {2}


async def test_tiles_only_grow(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 4])
    for sql in (
        "UPDATE audit_log_tiles SET hashes = substring(hashes FROM 33) WHERE level = 0",
        "UPDATE audit_log_tiles SET hashes = $1 || substring(hashes FROM 33) WHERE level = 0",
        "DELETE FROM audit_log_tiles",
    ):
        args = (bytes(32),) if "$1" in sql else ()
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only grow"):
            await sealed.conn.execute(sql, *args)
    assert await sealed.conn.fetchval("SELECT count(*) FROM audit_log_tiles") == 1
