"""Schema: migrations both ways, partitions, index use per query, and a writer role that has
no UPDATE or DELETE on audit rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command
from app.cli.migrate import alembic_config, migrate
from app.core.config import Settings
from app.core.db import driver_connection
from app.core.metrics import Metrics
from app.events.model import EventIn
from app.ledger.rotation import RETIREMENT_ACTION
from app.ledger.sql import RECORDED_RETIREMENTS, RETIREMENTS_BEFORE
from app.read import queries
from app.store import partitions
from app.wiring import close_resources, open_resources
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import SettingsFactory, event, make_settings, stored_rows, with_database

PLAN_ORG = "org-plans"


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def planned(admin: asyncpg.Connection) -> asyncpg.Connection:
    """20,000 rows over two months in two organizations, analyzed, so plans are realistic."""
    if not await admin.fetchval(
        "SELECT count(*) FROM audit_log WHERE organization_id = $1", PLAN_ORG
    ):
        await admin.execute(
            """INSERT INTO audit_log
               SELECT gen_random_uuid(), now() - make_interval(secs => i * 300),
                      CASE WHEN i % 2 = 0 THEN $1 ELSE 'org-plans-other' END, now(),
                      CASE WHEN i % 50 = 0 THEN 'fhir.patient.delete'
                           ELSE 'fhir.patient.read' END,
                      'success', 'user-' || (i % 200), NULL, 'Patient',
                      'Patient/' || (i % 500), 'p-' || (i % 1000),
                      (ARRAY['PUBLIC','INTERNAL','CONFIDENTIAL','PHI'])[1 + i % 4], NULL,
                      i % 500 = 0, NULL, 'req-' || (i % 5000), NULL, NULL, NULL, NULL, 'normal',
                      sha256(i::text::bytea),
                      sha256(i::text::bytea), 'k'
               FROM generate_series(1, 20000) AS i""",
            PLAN_ORG,
        )
    # Fresh statistics each time: other tests add rows (many without a patient), and plans
    # chosen on statistics from before them would test the wrong table.
    await admin.execute("ANALYZE audit_log")
    return admin


async def test_migrations_downgrade_and_upgrade_on_a_fresh_database(
    admin: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    name = f"audit_mig_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(database_url, name)
    settings = make_settings(url, redis_url)
    try:
        await asyncio.to_thread(migrate, settings)
        conn = await asyncpg.connect(url)
        tables = {r["relname"] for r in await conn.fetch("SELECT relname FROM pg_class")}
        assert {"audit_log", "audit_log_default", "api_keys"} <= tables
        month = datetime.now(UTC).strftime("audit_log_y%Ym%m")
        assert month in tables
        await asyncio.to_thread(command.downgrade, alembic_config(settings), "base")
        left = await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'audit_log%'")
        assert left == 0
        await asyncio.to_thread(migrate, settings)
        assert await conn.fetchval("SELECT to_regclass('audit_log') IS NOT NULL")
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_partitions_are_created_ahead_idempotently(engine_for: AsyncEngine) -> None:
    await partitions.ensure_partitions(engine_for, 5)
    assert await partitions.ensure_partitions(engine_for, 5) == 0


def _as_role(database_url: str, role: str) -> str:
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


async def test_writer_role_appends_and_nothing_else(
    admin: asyncpg.Connection, settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    """A login role holding only audit_writer seals batches and keeps partitions; UPDATE and
    DELETE fail, and stay refused by the trigger even when someone grants them."""
    role = f"audit_login_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE audit_writer')
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("cannot create roles on this server")
    url = _as_role(database_url, role)
    try:
        settings = settings_factory(run_writers=False, database_url=url)
        res = await open_resources(settings, Metrics.create())
        try:
            rec = EventIn.model_validate(event()).to_record(org, "2026-11-20T10:00:00.000000Z")
            await res.stream.enqueue([rec], 10)
            breaker = CircuitBreaker(1, res.metrics)
            writer = BatchWriter(settings, res.stream, res.metrics, breaker, "restricted")
            await asyncio.wait_for(writer.cycle(asyncio.Event()), 20)
            await writer.close()
            await partitions.ensure_partitions(res.engine, 4)
            async with driver_connection(res.engine) as raw:  # granted: None if refused
                assert await partitions.summarize_batch_ranges(raw) is not None
        finally:
            await close_resources(res)
        assert len(await stored_rows(database_url, org)) == 1
        conn = await asyncpg.connect(url)
        try:
            for sql in (
                "DELETE FROM audit_log WHERE organization_id = $1",
                "UPDATE audit_log SET action = 'x' WHERE organization_id = $1",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql, org)
            await admin.execute(f'GRANT UPDATE, DELETE ON audit_log TO "{role}"')
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute("DELETE FROM audit_log WHERE organization_id = $1", org)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'REVOKE ALL ON audit_log FROM "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')


async def _plan(conn: asyncpg.Connection, engine: AsyncEngine, query: Any) -> dict[str, Any]:
    compiled = query.compile(dialect=engine.dialect)
    params = [compiled.params[name] for name in compiled.positiontup]
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + compiled.string, *params)
    plan: dict[str, Any] = orjson.loads(raw)[0]["Plan"]
    return plan


SPARSE_ROWS = 200


async def _index_uses(
    conn: asyncpg.Connection, nodes: list[dict[str, Any]]
) -> set[tuple[str, str]]:
    """(audit_log index, partition) of each partition index the plan reads."""
    names = [n["Index Name"] for n in nodes if "Index Name" in n]
    rows = await conn.fetch(
        """SELECT DISTINCT parent.relname AS parent, child_table.relname AS partition
           FROM pg_inherits
           JOIN pg_class parent ON parent.oid = inhparent
           JOIN pg_class child ON child.oid = inhrelid
           JOIN pg_index ON indexrelid = inhrelid
           JOIN pg_class child_table ON child_table.oid = indrelid
           WHERE child.relname = ANY($1::text[])""",
        names,
    )
    return {(r["parent"], r["partition"]) for r in rows}


async def _parent_indexes(conn: asyncpg.Connection, nodes: list[dict[str, Any]]) -> set[str]:
    """The audit_log index each partition index of the plan belongs to."""
    return {parent for parent, _ in await _index_uses(conn, nodes)}


async def _partitions_read_otherwise(
    conn: asyncpg.Connection, nodes: list[dict[str, Any]], index: str
) -> int:
    """The planned organization's rows in the partitions whose plan uses an index other than
    the partition's own copy of `index`."""
    partitions = {part for parent, part in await _index_uses(conn, nodes) if parent != index}
    rows = 0
    for partition in partitions:
        rows += await conn.fetchval(
            f'SELECT count(*) FROM "{partition}" WHERE organization_id = $1', PLAN_ORG
        )
    return rows


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "ix_audit_log_org_time"),
        ({"start": datetime(2026, 11, 1, tzinfo=UTC)}, "ix_audit_log_org_time"),
        ({"action": ["fhir.patient.delete"]}, "ix_audit_log_org_action_time"),
        ({"action_prefix": "fhir.patient."}, "ix_audit_log_org_time"),
        ({"correlation_id": "req-1"}, "ix_audit_log_org_correlation_time"),
        ({"break_glass": True}, "ix_audit_log_org_break_glass_time"),
        ({"order": "asc"}, "ix_audit_log_org_time"),
        ({"principal_id": "user-7"}, "ix_audit_log_org_principal_time"),
        ({"patient_id": "p-1"}, "ix_audit_log_org_patient_time"),
        ({"data_classification": ["PHI"]}, "ix_audit_log_org_classification_time"),
    ],
)
async def test_each_query_uses_its_index_without_sorting(
    planned: asyncpg.Connection,
    engine_for: AsyncEngine,
    filters: dict[str, Any],
    index: str,
) -> None:
    """The planner picks the intended index, and that index yields rows in page order: with
    sequential and bitmap scans off (on this small table, with empty future partitions, sorting
    a few matching rows can be cheaper) the plan has no Sort node."""
    query = queries.event_select(queries.EventQuery(organization_id=PLAN_ORG, **filters))
    nodes = _nodes(await _plan(planned, engine_for, query))
    assert await _parent_indexes(planned, nodes) == {index}
    await planned.execute("SET enable_bitmapscan = off; SET enable_seqscan = off")
    ordered = _nodes(await _plan(planned, engine_for, query))
    await planned.execute("RESET enable_bitmapscan; RESET enable_seqscan")
    assert await _parent_indexes(planned, ordered) == {index}
    assert not [n for n in ordered if n["Node Type"] == "Sort"]


@pytest.mark.parametrize(
    ("subject", "index"),
    [
        ("patient_id", "ix_audit_log_org_patient_time"),
        ("principal_id", "ix_audit_log_org_principal_time"),
    ],
)
async def test_phi_reports_use_their_index(
    planned: asyncpg.Connection, engine_for: AsyncEngine, subject: str, index: str
) -> None:
    """The events report reads its subject's index in page order (no Sort); the summary reads
    the same index and groups only the subject's rows."""
    value = "p-3" if subject == "patient_id" else "user-7"  # both have PHI rows in the data
    query = queries.PhiQuery(PLAN_ORG, subject, value)
    events_sql = queries._phi_events_select(query, None)
    counts_sql = queries._phi_counts_select(query, None)
    planned_events = _nodes(await _plan(planned, engine_for, events_sql))
    assert index in await _parent_indexes(planned, planned_events)
    # Another index only where the organization has next to no rows: early in a month the
    # current partition holds a few hours of them beside other tests' rows, and their
    # statistics can make a bitmap AND with another index look cheaper there; that costs nothing.
    assert await _partitions_read_otherwise(planned, planned_events, index) <= SPARSE_ROWS
    counts = _nodes(await _plan(planned, engine_for, counts_sql))
    assert index in await _parent_indexes(planned, counts)
    assert await _partitions_read_otherwise(planned, counts, index) <= SPARSE_ROWS
    await planned.execute("SET enable_bitmapscan = off; SET enable_seqscan = off")
    try:
        events = _nodes(await _plan(planned, engine_for, events_sql))
    finally:
        await planned.execute("RESET enable_bitmapscan; RESET enable_seqscan")
    assert not [n for n in events if n["Node Type"] == "Sort"]
    conditions = " ".join(str(n.get("Index Cond", "")) for n in counts)
    assert subject in conditions  # the index is entered at the subject, not scanned whole


async def test_lookup_by_event_id_uses_the_unique_key(
    planned: asyncpg.Connection, engine_for: AsyncEngine
) -> None:
    query = queries._event_by_id(PLAN_ORG, uuid.uuid4())
    nodes = _nodes(await _plan(planned, engine_for, query))
    # Partitions the statistics call empty may be read another way: that costs nothing.
    assert "uq_audit_log_event" in await _parent_indexes(planned, nodes)


@pytest.mark.parametrize(
    ("sql", "args"), [(RETIREMENTS_BEFORE, (0, 1_000_000)), (RECORDED_RETIREMENTS, ())]
)
async def test_key_retirements_are_found_through_the_action_index(
    planned: asyncpg.Connection, sql: str, args: tuple[int, ...]
) -> None:
    """Verification (a part of a chain, a time range) and the writers look for the key
    retirements recorded in the log without reading the events around them."""
    raw = await planned.fetchval("EXPLAIN (FORMAT JSON) " + sql, PLAN_ORG, RETIREMENT_ACTION, *args)
    nodes = _nodes(orjson.loads(raw)[0]["Plan"])
    index = "ix_audit_log_org_action_time"
    assert index in await _parent_indexes(planned, nodes)
    # Partitions the statistics call empty may be read another way: that costs nothing.
    assert await _partitions_read_otherwise(planned, nodes, index) <= SPARSE_ROWS


def test_settings_reject_unsafe_values() -> None:
    with pytest.raises(ValueError):
        Settings(_env_file=None, signing_keys="bad")
