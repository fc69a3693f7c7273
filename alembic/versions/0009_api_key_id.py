"""audit_log.api_key_id: the API key that sent each event

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A nullable column without a default: only the catalog changes, no partition is rewritten.
# Events stored before it have none, and their canonical form (the hash) leaves the field out;
# every event stored after it carries the id of the key that sent it, inside its hash.
UPGRADE = ["ALTER TABLE audit_log ADD COLUMN api_key_id uuid"]
DOWNGRADE = ["ALTER TABLE audit_log DROP COLUMN api_key_id"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
