"""summarize the batch BRIN index as ranges fill, so verification reads only its batches

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Unsummarized BRIN ranges match every query: without autosummarize, a fresh table is read
# whole for each batch range until a VACUUM runs.
INDEX = "CREATE INDEX ix_audit_log_batch ON audit_log USING brin (batch_id) WITH ({options})"


def upgrade() -> None:
    op.execute("DROP INDEX ix_audit_log_batch")
    op.execute(INDEX.format(options="pages_per_range = 16, autosummarize = on"))


def downgrade() -> None:
    op.execute("DROP INDEX ix_audit_log_batch")
    op.execute(INDEX.format(options="pages_per_range = 16"))
