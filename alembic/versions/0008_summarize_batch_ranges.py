"""audit_summarize_batch_ranges(): summarize new ranges of the batch BRIN index on demand

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A BRIN range nobody summarized matches every query, so a read of one batch reads every such
# range of its partition. Autosummarize (0004) leaves the work to autovacuum, which may be off or
# behind; the worker and `verify` call this instead. It runs with the owner's rights (summarizing
# needs them), skips a partition whose lock it cannot get within a second (a vacuum or a prune
# holds it), and returns how many ranges it summarized.
UPGRADE = [
    """
    CREATE FUNCTION audit_summarize_batch_ranges() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public SET lock_timeout = '1s' AS $$
    DECLARE
        part regclass;
        total integer := 0;
    BEGIN
        FOR part IN
            SELECT inhrelid::regclass FROM pg_inherits
            WHERE inhparent = 'ix_audit_log_batch'::regclass
        LOOP
            BEGIN
                total := total + brin_summarize_new_values(part);
            EXCEPTION WHEN lock_not_available THEN
                NULL;
            END;
        END LOOP;
        RETURN total;
    END $$
    """,
    "REVOKE EXECUTE ON FUNCTION audit_summarize_batch_ranges() FROM PUBLIC",
    "GRANT EXECUTE ON FUNCTION audit_summarize_batch_ranges() TO audit_writer, audit_reader",
]

DOWNGRADE = ["DROP FUNCTION audit_summarize_batch_ranges()"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
