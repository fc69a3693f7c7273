"""append-only audit rows: writer and reader roles, and a trigger refusing UPDATE and DELETE

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Roles are cluster-wide, so they are created only when missing and kept on downgrade. Two
# databases of one fresh cluster migrated at once both find a role missing: the second CREATE
# fails (unique_violation on pg_authid, or duplicate_object), which here means "exists".
# Grant them to login roles: GRANT audit_writer TO ingest_service; GRANT audit_reader TO ...
UPGRADE = [
    """
    DO $$ BEGIN
        BEGIN
            CREATE ROLE audit_writer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
        BEGIN
            CREATE ROLE audit_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END $$
    """,
    "GRANT SELECT, INSERT ON audit_log, audit_ledger TO audit_writer",
    "GRANT USAGE ON SEQUENCE audit_batch_id_seq TO audit_writer",
    "GRANT SELECT ON api_keys TO audit_writer",
    "GRANT SELECT ON audit_log, audit_ledger, api_keys TO audit_reader",
    # Partition upkeep runs with the owner's rights, so the writer role needs no DDL rights.
    """ALTER FUNCTION audit_ensure_partitions(integer, integer)
       SECURITY DEFINER SET search_path = public""",
    "REVOKE EXECUTE ON FUNCTION audit_ensure_partitions(integer, integer) FROM PUBLIC",
    "GRANT EXECUTE ON FUNCTION audit_ensure_partitions(integer, integer) TO audit_writer",
    """
    CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- Only the table owner (the migration role) may change or remove audit rows, for
        -- retention; every other role, whatever it was granted, is refused.
        IF current_user <> (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            RAISE EXCEPTION 'audit rows are append-only: % on % refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END $$
    """,
    """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
       FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
    """CREATE TRIGGER audit_ledger_append_only BEFORE UPDATE OR DELETE ON audit_ledger
       FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
]

DOWNGRADE = [
    "DROP TRIGGER audit_ledger_append_only ON audit_ledger",
    "DROP TRIGGER audit_log_append_only ON audit_log",
    "DROP FUNCTION audit_refuse_change()",
    "GRANT EXECUTE ON FUNCTION audit_ensure_partitions(integer, integer) TO PUBLIC",
    "ALTER FUNCTION audit_ensure_partitions(integer, integer) SECURITY INVOKER",
    "REVOKE ALL ON audit_log, audit_ledger, api_keys FROM audit_writer, audit_reader",
    "REVOKE ALL ON SEQUENCE audit_batch_id_seq FROM audit_writer",
    "REVOKE ALL ON FUNCTION audit_ensure_partitions(integer, integer) FROM audit_writer",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
