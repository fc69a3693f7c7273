"""audit_log partitioned by month, api_keys, and the partition-ahead function

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Index set: each one serves a query of GET /events and costs ingest throughput.
# Lookup by event id uses the unique key; action/status/target filters ride on the time index.
UPGRADE = [
    """
    CREATE TABLE audit_log (
        event_id uuid NOT NULL,
        "timestamp" timestamptz NOT NULL,
        organization_id text NOT NULL,
        received_at timestamptz NOT NULL,
        action text NOT NULL,
        status text NOT NULL,
        principal_id text NOT NULL,
        principal_type text,
        target_resource_type text,
        target_resource_id text,
        patient_id text,
        data_classification text NOT NULL,
        purpose_of_use text,
        break_glass boolean NOT NULL,
        outcome_description text,
        correlation_id text,
        session_id text,
        ip_address text,
        user_agent text,
        details json,
        priority text NOT NULL,
        hash bytea NOT NULL,
        signature bytea NOT NULL,
        key_id text NOT NULL,
        CONSTRAINT uq_audit_log_event UNIQUE (event_id, "timestamp", organization_id),
        CONSTRAINT ck_audit_log_status CHECK (status IN ('attempt', 'success', 'failure')),
        CONSTRAINT ck_audit_log_classification
            CHECK (data_classification IN ('PUBLIC', 'INTERNAL', 'CONFIDENTIAL', 'PHI')),
        CONSTRAINT ck_audit_log_priority CHECK (priority IN ('normal', 'high')),
        CONSTRAINT ck_audit_log_hash_len CHECK (octet_length(hash) = 32)
    ) PARTITION BY RANGE ("timestamp")
    """,
    "CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT",
    'CREATE INDEX ix_audit_log_org_time ON audit_log (organization_id, "timestamp", event_id)',
    """CREATE INDEX ix_audit_log_org_principal_time
       ON audit_log (organization_id, principal_id, "timestamp", event_id)""",
    """CREATE INDEX ix_audit_log_org_patient_time
       ON audit_log (organization_id, patient_id, "timestamp", event_id)
       WHERE patient_id IS NOT NULL""",
    """CREATE INDEX ix_audit_log_org_classification_time
       ON audit_log (organization_id, data_classification, "timestamp", event_id)""",
    """
    CREATE FUNCTION audit_ensure_partitions(months_ahead integer, months_back integer DEFAULT 0)
    RETURNS integer LANGUAGE plpgsql AS $$
    DECLARE
        first_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC')
                                 - make_interval(months => months_back);
        month_start timestamp;
        part_name text;
        created integer := 0;
    BEGIN
        -- Several API and writer processes run this at start-up; one at a time.
        PERFORM pg_advisory_xact_lock(hashtext('audit_log_partitions'));
        FOR i IN 0 .. months_back + months_ahead LOOP
            month_start := first_month + make_interval(months => i);
            part_name := format('audit_log_y%sm%s',
                                to_char(month_start, 'YYYY'), to_char(month_start, 'MM'));
            IF to_regclass(part_name) IS NULL THEN
                BEGIN
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
                        part_name,
                        month_start AT TIME ZONE 'UTC',
                        (month_start + interval '1 month') AT TIME ZONE 'UTC');
                    created := created + 1;
                EXCEPTION WHEN check_violation THEN
                    RAISE WARNING 'partition % not created: the default partition holds rows '
                                  'in its range', part_name;
                END;
            END IF;
        END LOOP;
        RETURN created;
    END $$
    """,
    "SELECT audit_ensure_partitions(3, 1)",
    """
    CREATE TABLE api_keys (
        id uuid PRIMARY KEY,
        organization_id text NOT NULL,
        name text NOT NULL,
        scopes text[] NOT NULL,
        key_hash bytea NOT NULL,
        key_prefix text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz,
        CONSTRAINT uq_api_keys_key_hash UNIQUE (key_hash),
        CONSTRAINT ck_api_keys_scopes
            CHECK (scopes <@ ARRAY['ingest', 'read', 'verify', 'admin']::text[])
    )
    """,
    "CREATE INDEX ix_api_keys_organization_id ON api_keys (organization_id)",
]

DOWNGRADE = [
    "DROP TABLE api_keys",
    "DROP FUNCTION audit_ensure_partitions(integer, integer)",
    "DROP TABLE audit_log",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
