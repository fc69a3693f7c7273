"""audit_ledger: one Merkle-sealed, chained, signed entry per committed batch

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Events carry the batch they were sealed in (batch_id, from a sequence, may have gaps) and their
# leaf position; the ledger gives each committed batch its gap-free seq under a short lock.
# BRIN on batch_id: rows are appended in batch order, so it stays tiny and costs ingest little.
UPGRADE = [
    "CREATE SEQUENCE audit_batch_id_seq AS bigint",
    """
    CREATE TABLE audit_ledger (
        seq bigint PRIMARY KEY,
        batch_id bigint NOT NULL,
        event_count integer NOT NULL,
        merkle_root bytea NOT NULL,
        first_timestamp timestamptz NOT NULL,
        last_timestamp timestamptz NOT NULL,
        prev_head bytea NOT NULL,
        head bytea NOT NULL,
        key_id text NOT NULL,
        signature bytea NOT NULL,
        public_signature bytea,
        sealed_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT uq_audit_ledger_batch_id UNIQUE (batch_id),
        CONSTRAINT ck_audit_ledger_seq CHECK (seq > 0),
        CONSTRAINT ck_audit_ledger_count CHECK (event_count > 0)
    )
    """,
    "ALTER TABLE audit_log ADD COLUMN batch_id bigint, ADD COLUMN leaf_index integer",
    """CREATE INDEX ix_audit_log_batch ON audit_log USING brin (batch_id)
       WITH (pages_per_range = 16)""",
    # Empty unless a row was inserted outside the writer: free at ingest, and it lets
    # verification find unsealed rows without a scan.
    """CREATE INDEX ix_audit_log_unsealed ON audit_log (organization_id)
       WHERE batch_id IS NULL""",
]

DOWNGRADE = [
    "DROP INDEX ix_audit_log_unsealed",
    "DROP INDEX ix_audit_log_batch",
    "ALTER TABLE audit_log DROP COLUMN batch_id, DROP COLUMN leaf_index",
    "DROP TABLE audit_ledger",
    "DROP SEQUENCE audit_batch_id_seq",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
