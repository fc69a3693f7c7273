"""ledger heads v3: an entry's head commits to its sealed_at

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Entries sealed from now on have a v3 head (app.ledger.chain.ledger_head_v3): the v2 fields and
# then sealed_at, which seal_batch sets under the chain's lock and never lets decrease along a
# chain. Entries already sealed keep their v1 and v2 heads; nothing is rewritten.
UPGRADE = [
    "ALTER TABLE audit_ledger DROP CONSTRAINT ck_audit_ledger_head_version",
    """ALTER TABLE audit_ledger
       ADD CONSTRAINT ck_audit_ledger_head_version CHECK (head_version IN (1, 2, 3))""",
]

DOWNGRADE = [
    # The code before 0014 verifies v1 and v2 heads only: an entry with a v3 head would fail it.
    """
    DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM audit_ledger WHERE head_version = 3) THEN
            RAISE EXCEPTION 'the ledger has entries with v3 heads (committing to sealed_at); '
                'the schema before 0014 cannot verify them';
        END IF;
    END $$
    """,
    "ALTER TABLE audit_ledger DROP CONSTRAINT ck_audit_ledger_head_version",
    """ALTER TABLE audit_ledger
       ADD CONSTRAINT ck_audit_ledger_head_version CHECK (head_version IN (1, 2))""",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
