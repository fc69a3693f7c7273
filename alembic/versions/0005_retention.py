"""retention: records of pruned partitions and of the batches they held

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A pruned partition leaves one signed row in audit_prunes, and one signed row per batch it held
# in audit_pruned_batches: the whole batch gone (leaves NULL), or, for a batch that also has events
# in partitions still kept, the event hashes of its pruned leaves, so its Merkle root still
# recomputes. Verification reads them to tell pruned from deleted.
UPGRADE = [
    """
    CREATE TABLE audit_prunes (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        partition_name text NOT NULL,
        range_start timestamptz NOT NULL,
        range_end timestamptz NOT NULL,
        event_count bigint NOT NULL,
        batch_count integer NOT NULL,
        pruned_at timestamptz NOT NULL,
        key_id text NOT NULL,
        signature bytea NOT NULL
    )
    """,
    """
    CREATE TABLE audit_pruned_batches (
        batch_id bigint PRIMARY KEY,
        pruned_events integer NOT NULL CHECK (pruned_events > 0),
        leaves bytea,
        key_id text NOT NULL,
        signature bytea NOT NULL
    )
    """,
    "GRANT SELECT ON audit_prunes, audit_pruned_batches TO audit_writer, audit_reader",
    """CREATE TRIGGER audit_prunes_append_only BEFORE UPDATE OR DELETE ON audit_prunes
       FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
    """CREATE TRIGGER audit_pruned_batches_append_only
       BEFORE UPDATE OR DELETE ON audit_pruned_batches
       FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
]

DOWNGRADE = ["DROP TABLE audit_pruned_batches", "DROP TABLE audit_prunes"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
