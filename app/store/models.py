"""SQLAlchemy table definitions used for queries. The DDL itself lives in Alembic migrations
(partitioning is written there by hand)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import ARRAY

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("event_id", Uuid(as_uuid=True), nullable=False),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("organization_id", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("action", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("principal_id", Text, nullable=False),
    Column("principal_type", Text),
    Column("target_resource_type", Text),
    Column("target_resource_id", Text),
    Column("patient_id", Text),
    Column("data_classification", Text, nullable=False),
    Column("purpose_of_use", Text),
    Column("break_glass", Boolean, nullable=False),
    Column("outcome_description", Text),
    Column("correlation_id", Text),
    Column("session_id", Text),
    Column("ip_address", Text),
    Column("user_agent", Text),
    Column("details", JSON(none_as_null=True)),
    Column("priority", Text, nullable=False),
    Column("api_key_id", Uuid(as_uuid=True)),
    Column("hash", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("batch_id", BigInteger),
    Column("leaf_index", Integer),
)

# Column order of audit_log, which the writer's COPY follows.
AUDIT_COLUMNS: tuple[str, ...] = tuple(c.name for c in audit_log.columns)

audit_ledger = Table(
    "audit_ledger",
    metadata,
    Column("chain", SmallInteger, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("batch_id", BigInteger, nullable=False, unique=True),
    Column("event_count", Integer, nullable=False),
    Column("merkle_root", LargeBinary, nullable=False),
    Column("first_timestamp", DateTime(timezone=True), nullable=False),
    Column("last_timestamp", DateTime(timezone=True), nullable=False),
    Column("prev_head", LargeBinary, nullable=False),
    Column("head", LargeBinary, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("public_signature", LargeBinary),
    Column("sealed_at", DateTime(timezone=True), nullable=False),
    # The chain's log after this entry's batch (app.ledger.logstore); head_version 2 commits to it,
    # 3 to it and to sealed_at (which seal_batch sets, never decreasing along a chain).
    Column("tree_size", BigInteger, nullable=False),
    Column("tree_root", LargeBinary, nullable=False),
    Column("frontier", LargeBinary, nullable=False),
    Column("head_version", SmallInteger, nullable=False, server_default="1"),
)

# C2SP tlog-tiles of each chain's log: tile `idx` of tile level `level`, up to 256 hashes that
# only ever grow (a trigger refuses any other change).
audit_log_tiles = Table(
    "audit_log_tiles",
    metadata,
    Column("chain", Integer, primary_key=True),
    Column("level", SmallInteger, primary_key=True),
    Column("idx", BigInteger, primary_key=True),
    Column("hashes", LargeBinary, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid(as_uuid=True), primary_key=True),
    Column("organization_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("key_hash", LargeBinary, nullable=False, unique=True),
    Column("key_prefix", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("mac", LargeBinary),
    Column("mac_key_id", Text),
)
