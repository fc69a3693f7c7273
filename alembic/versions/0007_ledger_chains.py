"""audit_ledger.chain: one chain per stream shard, keyed (chain, seq)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# With AUDIT_STREAM_SHARDS=N the writers of shard c seal into chain c (app.ledger.seal): each chain
# has its own gap-free seq and its own short head lock. Every existing entry is chain 0, whose
# genesis head is unchanged, so the chain sealed so far verifies as before.
UPGRADE = [
    "ALTER TABLE audit_ledger ADD COLUMN chain smallint NOT NULL DEFAULT 0",
    "ALTER TABLE audit_ledger ADD CONSTRAINT ck_audit_ledger_chain CHECK (chain >= 0)",
    "ALTER TABLE audit_ledger DROP CONSTRAINT audit_ledger_pkey",
    "ALTER TABLE audit_ledger ADD CONSTRAINT audit_ledger_pkey PRIMARY KEY (chain, seq)",
]

DOWNGRADE = [
    "ALTER TABLE audit_ledger DROP CONSTRAINT audit_ledger_pkey",
    "ALTER TABLE audit_ledger ADD CONSTRAINT audit_ledger_pkey PRIMARY KEY (seq)",
    "ALTER TABLE audit_ledger DROP CONSTRAINT ck_audit_ledger_chain",
    "ALTER TABLE audit_ledger DROP COLUMN chain",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
