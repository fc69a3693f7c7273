"""the watch: per-organization rule settings, restricted patients, relationships, alerts and the
detector's progress through each chain

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONFIG_TABLES = ("watch_rule_settings", "watch_restricted_patients", "watch_relationships")

# What an organization configured (app.watch reads it; a rule with no row runs on its defaults in
# code). Every change to these tables bumps the organization's row in watch_config_versions (the
# triggers below, with the owner's rights), so the detector reloads an organization's settings
# when, and only when, they changed.
TABLES = [
    """
    CREATE TABLE watch_rule_settings (
        organization_id text NOT NULL,
        rule text NOT NULL CHECK (rule ~ '^[a-z][a-z_]{0,63}$'),
        enabled boolean NOT NULL,
        severity text NOT NULL CHECK (severity IN ('low', 'medium', 'high')),
        params jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
        updated_by text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (organization_id, rule)
    )
    """,
    """
    CREATE TABLE watch_restricted_patients (
        organization_id text NOT NULL,
        patient_id text NOT NULL,
        category text NOT NULL CHECK (category IN ('vip', 'employee', 'confidential')),
        added_by text NOT NULL,
        added_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (organization_id, patient_id)
    )
    """,
    """
    CREATE TABLE watch_relationships (
        organization_id text NOT NULL,
        principal_id text NOT NULL,
        patient_id text NOT NULL,
        relation text NOT NULL CHECK (relation IN ('self', 'relative', 'coworker')),
        added_by text NOT NULL,
        added_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (organization_id, principal_id, patient_id)
    )
    """,
    """
    CREATE TABLE watch_config_versions (
        organization_id text PRIMARY KEY,
        version bigint NOT NULL
    )
    """,
    # One row per case: its id is uuid5 of (organization, rule, subject, window), so the same case
    # found twice (two detectors, a restart) is inserted once. event_ids are the events that
    # raised it. recorded_at: when its audit.alert.raised event was queued (NULL: not yet; the
    # outbox's partial index). The review columns are the later workflow's: a case is closed
    # only with a disposition, a note, who closed it and when.
    """
    CREATE TABLE watch_alerts (
        alert_id uuid PRIMARY KEY,
        organization_id text NOT NULL,
        rule text NOT NULL,
        severity text NOT NULL CHECK (severity IN ('low', 'medium', 'high')),
        subject text NOT NULL,
        principal_id text,
        patient_id text,
        window_start timestamptz NOT NULL,
        window_end timestamptz NOT NULL,
        event_ids uuid[] NOT NULL CHECK (cardinality(event_ids) BETWEEN 1 AND 1000),
        details jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
        raised_at timestamptz NOT NULL DEFAULT now(),
        recorded_at timestamptz,
        status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'assigned', 'closed')),
        assignee text,
        disposition text
            CHECK (disposition IN ('appropriate', 'inappropriate', 'needs_follow_up')),
        note text,
        closed_at timestamptz,
        closed_by text,
        CONSTRAINT ck_watch_alerts_window CHECK (window_end >= window_start),
        CONSTRAINT ck_watch_alerts_assigned CHECK (status <> 'assigned' OR assignee IS NOT NULL),
        CONSTRAINT ck_watch_alerts_closed CHECK (
            (status = 'closed') = (closed_at IS NOT NULL)
            AND (status <> 'closed' OR (disposition IS NOT NULL AND closed_by IS NOT NULL
                                        AND length(btrim(coalesce(note, ''))) > 0))
        )
    )
    """,
    """CREATE INDEX ix_watch_alerts_org_status_raised
       ON watch_alerts (organization_id, status, raised_at)""",
    """CREATE INDEX ix_watch_alerts_unrecorded ON watch_alerts (raised_at)
       WHERE recorded_at IS NULL""",
    # The newest ledger seq of each chain the detector has examined. A deployment upgraded with a
    # ledger starts watching from its head, not from years of history; a chain with no row
    # starts at its first entry.
    """
    CREATE TABLE watch_progress (
        chain integer PRIMARY KEY CHECK (chain >= 0),
        seq bigint NOT NULL CHECK (seq >= 0),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """INSERT INTO watch_progress (chain, seq)
       SELECT chain, max(seq) FROM audit_ledger GROUP BY chain""",
]

VERSIONS = [
    """
    CREATE FUNCTION watch_config_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
    BEGIN
        INSERT INTO watch_config_versions AS v (organization_id, version)
        SELECT DISTINCT organization_id, 1 FROM changed_rows
        ON CONFLICT (organization_id) DO UPDATE SET version = v.version + 1;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION watch_config_updated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
    BEGIN
        INSERT INTO watch_config_versions AS v (organization_id, version)
        SELECT organization_id, 1 FROM old_rows UNION SELECT organization_id, 1 FROM new_rows
        ON CONFLICT (organization_id) DO UPDATE SET version = v.version + 1;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION watch_config_truncated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
    BEGIN
        UPDATE watch_config_versions SET version = version + 1;
        RETURN NULL;
    END $$
    """,
]
# Transition tables allow one event per trigger: inserted rows, deleted rows, and both sides of
# an update (an organization id changed by an update bumps both organizations).
CHANGES = (
    ("inserted", "INSERT", "NEW TABLE AS changed_rows", "watch_config_changed"),
    ("deleted", "DELETE", "OLD TABLE AS changed_rows", "watch_config_changed"),
    ("updated", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows", "watch_config_updated"),
)


def _version_triggers() -> list[str]:
    statements = []
    for table in CONFIG_TABLES:
        for name, event, tables, function in CHANGES:
            statements.append(
                f"""CREATE TRIGGER {table}_{name} AFTER {event} ON {table}
                    REFERENCING {tables}
                    FOR EACH STATEMENT EXECUTE FUNCTION {function}()"""
            )
        statements.append(
            f"""CREATE TRIGGER {table}_truncated AFTER TRUNCATE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION watch_config_truncated()"""
        )
    return statements


# The detector runs in the writers' processes (audit_writer): it reads the settings, inserts
# alerts, marks them recorded (that column only) and keeps its progress. Readers see all of it.
# Changing settings and reviewing cases are the API's, granted when it does them.
GRANTS = [
    "GRANT SELECT ON " + ", ".join(CONFIG_TABLES) + ", watch_config_versions"
    " TO audit_writer, audit_reader",
    "GRANT SELECT, INSERT ON watch_alerts TO audit_writer",
    "GRANT UPDATE (recorded_at) ON watch_alerts TO audit_writer",
    "GRANT SELECT, INSERT, UPDATE ON watch_progress TO audit_writer",
    "GRANT SELECT ON watch_alerts, watch_progress TO audit_reader",
]

UPGRADE = TABLES + VERSIONS + _version_triggers() + GRANTS

DOWNGRADE = [
    # An alert whose audit.alert.raised event was never queued exists only here: refuse to lose
    # it (the writers record it within a few seconds when they run).
    """
    DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM watch_alerts WHERE recorded_at IS NULL) THEN
            RAISE EXCEPTION 'watch_alerts holds alerts not yet recorded in the audit log; '
                'run the writers until they are, then downgrade';
        END IF;
    END $$
    """,
    "DROP TABLE watch_progress",
    "DROP TABLE watch_alerts",
    *(f"DROP TABLE {table}" for table in CONFIG_TABLES),
    "DROP TABLE watch_config_versions",
    "DROP FUNCTION watch_config_changed()",
    "DROP FUNCTION watch_config_updated()",
    "DROP FUNCTION watch_config_truncated()",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
