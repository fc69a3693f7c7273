"""indexes for the selective compliance queries: correlation id, break-glass, action

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Measured on 10 million events (BENCHMARKS.md): without these, a correlation id (a handful of
# events) scanned a whole organization's time index (seconds), a rare action ~70 ms and
# break-glass events ~40 ms. Each serves its filter in page order, so no query sorts its range.
# Break-glass is partial (a fraction of a percent of rows): nearly free at ingest.
UPGRADE = [
    """CREATE INDEX ix_audit_log_org_correlation_time
       ON audit_log (organization_id, correlation_id, "timestamp", event_id)
       WHERE correlation_id IS NOT NULL""",
    """CREATE INDEX ix_audit_log_org_break_glass_time
       ON audit_log (organization_id, "timestamp", event_id) WHERE break_glass""",
    """CREATE INDEX ix_audit_log_org_action_time
       ON audit_log (organization_id, action, "timestamp", event_id)""",
]

DOWNGRADE = [
    "DROP INDEX ix_audit_log_org_action_time",
    "DROP INDEX ix_audit_log_org_break_glass_time",
    "DROP INDEX ix_audit_log_org_correlation_time",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
