"""api_keys scopes: `priority` (may send priority: high) and `operator` (service-wide figures)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = [
    "ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_scopes",
    """ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_scopes CHECK (scopes <@ ARRAY[
        'ingest', 'read', 'verify', 'admin', 'priority', 'operator']::text[])""",
]
DOWNGRADE = [
    "ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_scopes",
    """ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_scopes
       CHECK (scopes <@ ARRAY['ingest', 'read', 'verify', 'admin']::text[])""",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
