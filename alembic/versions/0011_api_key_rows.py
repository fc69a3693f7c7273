"""api_keys rows: a MAC with the service key, and only revocation allowed to the service roles

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# `keys create` MACs what a row grants (app.apikeys.keys); the API refuses a row whose MAC does not
# check, so a row inserted or changed around the command (a minted key) never authenticates.
# Rows made before this have none until `python -m app keys seal` vouches for them. The trigger
# lets every role but the table's owner change a row only by revoking it (revoked_at from NULL
# to a time), and delete none: whatever was granted, no un-revoking, no widened scopes.
UPGRADE = [
    "ALTER TABLE api_keys ADD COLUMN mac bytea, ADD COLUMN mac_key_id text",
    """
    CREATE FUNCTION audit_api_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
            RETURN NEW;
        END IF;
        IF TG_OP = 'UPDATE' AND OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
           AND (NEW.id, NEW.organization_id, NEW.name, NEW.scopes, NEW.key_hash, NEW.key_prefix,
                NEW.created_at, NEW.mac, NEW.mac_key_id)
               IS NOT DISTINCT FROM
               (OLD.id, OLD.organization_id, OLD.name, OLD.scopes, OLD.key_hash, OLD.key_prefix,
                OLD.created_at, OLD.mac, OLD.mac_key_id)
        THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'api keys can only be revoked: % on % refused', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """CREATE TRIGGER api_keys_guard BEFORE UPDATE OR DELETE ON api_keys
       FOR EACH ROW EXECUTE FUNCTION audit_api_keys_guard()""",
]
DOWNGRADE = [
    "DROP TRIGGER api_keys_guard ON api_keys",
    "DROP FUNCTION audit_api_keys_guard()",
    "ALTER TABLE api_keys DROP COLUMN mac, DROP COLUMN mac_key_id",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
