"""Migration 0015: the watch's tables both ways, what the writer role may do with them, the
configuration versions the triggers keep, and the rules a case's review columns follow."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from alembic import command
from app.cli.migrate import alembic_config, migrate
from app.core.config import Settings
from tests.watch.conftest import FreshDatabase
from tests.watch.planted import WEDNESDAY_10AM, access, seal_records

WATCH_TABLES = {
    "watch_rule_settings",
    "watch_restricted_patients",
    "watch_relationships",
    "watch_config_versions",
    "watch_alerts",
    "watch_progress",
}

INSERT_ALERT = """
INSERT INTO watch_alerts (alert_id, organization_id, rule, severity, subject, window_start,
    window_end, event_ids)
VALUES ($1, 'org-a', 'break_glass', 'medium', 'dr.x', now(), now(), ARRAY[gen_random_uuid()])
"""


def _settings(url: str) -> Settings:
    return Settings(database_url=url, _env_file=None)


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"))


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT relname FROM pg_class WHERE relname LIKE 'watch_%'")
    return {r["relname"] for r in rows} & WATCH_TABLES


async def test_upgrade_starts_watching_at_the_ledger_head_and_downgrade_removes_it(
    fresh_database: FreshDatabase,
) -> None:
    url = await fresh_database("0014")
    at = WEDNESDAY_10AM
    await seal_records(url, [access("org-a", "dr.x", f"p{i}", at) for i in range(6)], batch_size=2)
    conn = await asyncpg.connect(url)
    try:
        assert await _tables(conn) == set()
        await asyncio.to_thread(migrate, _settings(url))
        assert await _tables(conn) == WATCH_TABLES
        # Three entries were sealed before: the detector starts after them, not at years of
        # history it was not there to watch.
        assert await conn.fetch("SELECT chain, seq FROM watch_progress") == [(0, 3)]
        await asyncio.to_thread(command.downgrade, alembic_config(_settings(url)), "0014")
        assert await _tables(conn) == set()
        await asyncio.to_thread(migrate, _settings(url))
        assert await _tables(conn) == WATCH_TABLES
    finally:
        await conn.close()


async def test_downgrade_refuses_to_drop_alerts_not_yet_recorded(
    fresh_database: FreshDatabase,
) -> None:
    url = await fresh_database()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(INSERT_ALERT, uuid.uuid4())
        config = alembic_config(_settings(url))
        with pytest.raises(Exception, match="not yet recorded"):
            await asyncio.to_thread(command.downgrade, config, "0014")
        assert await _tables(conn) == WATCH_TABLES
        await conn.execute("UPDATE watch_alerts SET recorded_at = now()")
        await asyncio.to_thread(command.downgrade, config, "0014")
        assert await _tables(conn) == set()
    finally:
        await conn.close()


async def test_every_change_to_an_organizations_settings_bumps_its_version(
    fresh_database: FreshDatabase,
) -> None:
    url = await fresh_database()
    conn = await asyncpg.connect(url)

    async def versions() -> dict[str, int]:
        rows = await conn.fetch("SELECT organization_id, version FROM watch_config_versions")
        return {r["organization_id"]: r["version"] for r in rows}

    try:
        await conn.execute(
            """INSERT INTO watch_restricted_patients (organization_id, patient_id, category,
               added_by) VALUES ('org-a', 'p1', 'vip', 'officer'), ('org-a', 'p2', 'employee',
               'officer'), ('org-b', 'p1', 'confidential', 'officer')"""
        )
        assert await versions() == {"org-a": 1, "org-b": 1}  # once per statement
        await conn.execute(
            """INSERT INTO watch_rule_settings (organization_id, rule, enabled, severity,
               updated_by) VALUES ('org-a', 'volume', false, 'low', 'officer')"""
        )
        await conn.execute(
            """INSERT INTO watch_relationships (organization_id, principal_id, patient_id,
               relation, added_by) VALUES ('org-b', 'dr.x', 'p9', 'relative', 'officer')"""
        )
        assert await versions() == {"org-a": 2, "org-b": 2}
        await conn.execute(
            "UPDATE watch_relationships SET organization_id = 'org-c' WHERE principal_id = 'dr.x'"
        )
        assert await versions() == {"org-a": 2, "org-b": 3, "org-c": 1}
        await conn.execute("DELETE FROM watch_restricted_patients WHERE organization_id = 'org-a'")
        await conn.execute("UPDATE watch_rule_settings SET enabled = true")
        assert await versions() == {"org-a": 4, "org-b": 3, "org-c": 1}
        await conn.execute("TRUNCATE watch_relationships")
        assert await versions() == {"org-a": 5, "org-b": 4, "org-c": 2}
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("change", "allowed"),
    [
        ("status = 'assigned', assignee = 'officer'", True),
        ("status = 'assigned'", False),  # assigned to nobody
        (
            "status = 'closed', disposition = 'appropriate', note = 'covering for a colleague',"
            " closed_at = now(), closed_by = 'officer'",
            True,
        ),
        (
            "status = 'closed', disposition = 'appropriate', note = '  ', closed_at = now(),"
            " closed_by = 'officer'",
            False,  # no note
        ),
        ("status = 'closed', note = 'seen', closed_at = now(), closed_by = 'officer'", False),
        ("closed_at = now()", False),  # open, with a closing time
        ("status = 'dismissed'", False),
        ("disposition = 'fine'", False),
    ],
)
async def test_a_case_is_closed_only_with_a_disposition_and_a_note(
    fresh_database: FreshDatabase, change: str, allowed: bool
) -> None:
    url = await fresh_database()
    conn = await asyncpg.connect(url)
    try:
        alert = uuid.uuid4()
        await conn.execute(INSERT_ALERT, alert)
        update = f"UPDATE watch_alerts SET {change} WHERE alert_id = $1"
        if allowed:
            await conn.execute(update, alert)
        else:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(update, alert)
    finally:
        await conn.close()


async def test_the_writer_role_inserts_alerts_and_marks_them_recorded_and_nothing_more(
    fresh_database: FreshDatabase,
) -> None:
    url = await fresh_database()
    admin = await asyncpg.connect(url)
    role = f"audit_watch_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE audit_writer')
    except asyncpg.InsufficientPrivilegeError:
        await admin.close()
        pytest.skip("cannot create roles on this server")
    conn = await asyncpg.connect(_as_role(url, role))
    try:
        alert = uuid.uuid4()
        await conn.execute(INSERT_ALERT, alert)
        await conn.execute("UPDATE watch_alerts SET recorded_at = now() WHERE alert_id = $1", alert)
        await conn.execute("INSERT INTO watch_progress (chain, seq) VALUES (0, 1)")
        await conn.execute("UPDATE watch_progress SET seq = 2 WHERE chain = 0")
        assert await conn.fetchval("SELECT count(*) FROM watch_rule_settings") == 0
        for sql in (
            "UPDATE watch_alerts SET event_ids = ARRAY[gen_random_uuid()]",
            "UPDATE watch_alerts SET status = 'closed'",
            "DELETE FROM watch_alerts",
            "DELETE FROM watch_progress",
            """INSERT INTO watch_restricted_patients (organization_id, patient_id, category,
               added_by) VALUES ('org-a', 'p1', 'vip', 'x')""",
            """INSERT INTO watch_rule_settings (organization_id, rule, enabled, severity,
               updated_by) VALUES ('org-a', 'volume', false, 'low', 'x')""",
            "INSERT INTO watch_config_versions VALUES ('org-a', 99)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    finally:
        await conn.close()
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()
