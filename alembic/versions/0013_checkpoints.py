"""signed checkpoints of each chain's log and the witnesses' cosignatures

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A checkpoint (C2SP tlog-checkpoint as a C2SP signed-note, signed with the Ed25519 ledger key) of
# a chain's log at the tree size of one of its ledger entries, and each witness's cosignature of
# it (C2SP tlog-cosignature). Rows are only ever added: triggers refuse UPDATE, DELETE and
# TRUNCATE (of the log's tiles too) to every role; a superuser can turn triggers off, which is
# what the witnesses are for. They are a copy: a checkpoint proves something only by its
# signatures, and the cosigned ones are kept outside the database too (AUDIT_CHECKPOINT_DIR, the
# witnesses' state).
UPGRADE = [
    """
    CREATE TABLE audit_checkpoints (
        chain integer NOT NULL CHECK (chain >= 0),
        tree_size bigint NOT NULL CHECK (tree_size > 0),
        root bytea NOT NULL CHECK (length(root) = 32),
        seq bigint NOT NULL CHECK (seq > 0),
        sealed_at timestamptz NOT NULL,
        note text NOT NULL CHECK (length(note) <= 16384),
        made_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (chain, tree_size)
    )
    """,
    """
    CREATE TABLE audit_checkpoint_cosignatures (
        chain integer NOT NULL,
        tree_size bigint NOT NULL,
        witness text NOT NULL CHECK (length(witness) <= 512),
        line text NOT NULL CHECK (length(line) <= 8192),
        cosigned_at timestamptz NOT NULL,
        PRIMARY KEY (chain, tree_size, witness),
        FOREIGN KEY (chain, tree_size) REFERENCES audit_checkpoints (chain, tree_size)
    )
    """,
    """
    CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'checkpoints are only added: % on % refused', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
       FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only()""",
    """CREATE TRIGGER audit_checkpoint_cosignatures_append_only
       BEFORE UPDATE OR DELETE ON audit_checkpoint_cosignatures
       FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only()""",
    """CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
       FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoints_append_only()""",
    """CREATE TRIGGER audit_checkpoint_cosignatures_no_truncate
       BEFORE TRUNCATE ON audit_checkpoint_cosignatures
       FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoints_append_only()""",
    # The log's tiles too (0012 covers UPDATE and DELETE).
    """CREATE TRIGGER audit_log_tiles_no_truncate BEFORE TRUNCATE ON audit_log_tiles
       FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoints_append_only()""",
    "GRANT SELECT, INSERT ON audit_checkpoints, audit_checkpoint_cosignatures TO audit_writer",
    "GRANT SELECT ON audit_checkpoints, audit_checkpoint_cosignatures TO audit_reader",
]

DOWNGRADE = [
    "DROP TRIGGER audit_log_tiles_no_truncate ON audit_log_tiles",
    "DROP TABLE audit_checkpoint_cosignatures",
    "DROP TABLE audit_checkpoints",
    "DROP FUNCTION audit_checkpoints_append_only()",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
