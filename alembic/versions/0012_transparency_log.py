"""each chain a transparency log: audit_log_tiles, and tree size, root and frontier per entry

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sys
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.util import await_only

from alembic import op
from app.ledger.logstore import pack_frontier, tile_appends
from app.ledger.merkle import leaf_hash
from app.ledger.prune import unpack_leaves
from app.ledger.tlog import EMPTY_FRONTIER, Frontier, append_leaves, frontier_root

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each chain becomes an RFC 9162 Merkle log whose leaves are its events in sealed order (entry by
# entry, leaf index by leaf index; leaf hash SHA-256(0x00 || event hash)). A ledger entry records
# the log's size, root and frontier (its right-edge peaks, largest first) after its batch;
# entries sealed from now on have a v2 head that commits to size and root (app.ledger.chain).
# The log's hashes on tile levels (tree levels 0, 8, 16, ...) are kept as C2SP tlog-tiles:
# tile (level, idx) holds up to 256 hashes, a partial tile grows by appending, and a trigger lets
# nothing else happen to it, whoever asks (the owner too: nothing needs to rewrite a tile).
#
# The entries already sealed keep their v1 heads and signatures: their heads do not commit to the
# tree (verification recomputes it from the events; the first checkpoint signs the log's root at
# its size, and with it every older entry's root). Their events are put into the log here, in
# sealed order. A batch pruned whole by retention before now left no event hashes: it adds no
# leaves (its entry's size equals the one before). A partly pruned batch's pruned leaves come
# from the hashes its prune record kept. A batch with leaves neither stored nor recorded (a
# deleted event, found by `python -m app verify`) stops the migration: the log cannot be built.
UPGRADE = [
    """
    CREATE TABLE audit_log_tiles (
        chain integer NOT NULL CHECK (chain >= 0),
        level smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
        idx bigint NOT NULL CHECK (idx >= 0),
        hashes bytea NOT NULL
            CHECK (length(hashes) BETWEEN 32 AND 8192 AND length(hashes) % 32 = 0),
        PRIMARY KEY (chain, level, idx)
    )
    """,
    """
    CREATE FUNCTION audit_log_tiles_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE'
           AND (NEW.chain, NEW.level, NEW.idx) = (OLD.chain, OLD.level, OLD.idx)
           AND length(NEW.hashes) > length(OLD.hashes)
           AND substring(NEW.hashes FROM 1 FOR length(OLD.hashes)) = OLD.hashes
        THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'log tiles only grow: % on % refused', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """CREATE TRIGGER audit_log_tiles_append_only BEFORE UPDATE OR DELETE ON audit_log_tiles
       FOR EACH ROW EXECUTE FUNCTION audit_log_tiles_append_only()""",
    "GRANT SELECT, INSERT, UPDATE ON audit_log_tiles TO audit_writer",
    "GRANT SELECT ON audit_log_tiles TO audit_reader",
    """ALTER TABLE audit_ledger ADD COLUMN tree_size bigint, ADD COLUMN tree_root bytea,
       ADD COLUMN frontier bytea, ADD COLUMN head_version smallint NOT NULL DEFAULT 1""",
    # `log`: read the log's consistency proofs and tiles (every tenant's volume, no events).
    "ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_scopes",
    """ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_scopes CHECK (scopes <@ ARRAY[
        'ingest', 'read', 'verify', 'admin', 'priority', 'operator', 'log']::text[])""",
]

AFTER_BACKFILL = [
    """ALTER TABLE audit_ledger ALTER COLUMN tree_size SET NOT NULL,
       ALTER COLUMN tree_root SET NOT NULL, ALTER COLUMN frontier SET NOT NULL""",
    """ALTER TABLE audit_ledger
       ADD CONSTRAINT ck_audit_ledger_tree_size CHECK (tree_size >= 0),
       ADD CONSTRAINT ck_audit_ledger_tree_root CHECK (length(tree_root) = 32),
       ADD CONSTRAINT ck_audit_ledger_frontier
           CHECK (length(frontier) <= 2048 AND length(frontier) % 32 = 0),
       ADD CONSTRAINT ck_audit_ledger_head_version CHECK (head_version IN (1, 2))""",
]

DOWNGRADE = [
    # The code before the log verifies v1 heads only: an entry with a v2 head would fail it.
    """
    DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM audit_ledger WHERE head_version = 2) THEN
            RAISE EXCEPTION 'the ledger has entries with v2 heads (sealed into the log); '
                'the schema before 0012 cannot verify them';
        END IF;
    END $$
    """,
    # Fails on the check while a key holds `log`: revoke or re-issue such keys first.
    "ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_scopes",
    """ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_scopes CHECK (scopes <@ ARRAY[
        'ingest', 'read', 'verify', 'admin', 'priority', 'operator']::text[])""",
    """ALTER TABLE audit_ledger DROP COLUMN head_version, DROP COLUMN frontier,
       DROP COLUMN tree_root, DROP COLUMN tree_size""",
    "DROP TABLE audit_log_tiles",
    "DROP FUNCTION audit_log_tiles_append_only()",
]

ENTRIES_PER_STEP = 500

CHAINS = "SELECT DISTINCT chain FROM audit_ledger ORDER BY chain"
ENTRIES = """
SELECT seq, batch_id, event_count FROM audit_ledger WHERE chain = $1 AND seq > $2
ORDER BY seq LIMIT $3
"""
# Other chains' batches interleave: the rows of an id range are filtered by batch in Python.
ROWS = """
SELECT batch_id, leaf_index, hash FROM audit_log WHERE batch_id >= $1 AND batch_id <= $2
ORDER BY batch_id, leaf_index
"""
PRUNED = "SELECT batch_id, leaves FROM audit_pruned_batches WHERE batch_id = ANY($1::bigint[])"
TILES = """
INSERT INTO audit_log_tiles AS t (chain, level, idx, hashes)
SELECT $1, u.level, u.idx, u.hashes
FROM unnest($2::smallint[], $3::bigint[], $4::bytea[]) AS u(level, idx, hashes)
ON CONFLICT (chain, level, idx) DO UPDATE SET hashes = t.hashes || EXCLUDED.hashes
"""
FILL = """
UPDATE audit_ledger l SET tree_size = u.size, tree_root = u.root, frontier = u.frontier
FROM unnest($2::bigint[], $3::bigint[], $4::bytea[], $5::bytea[]) AS u(seq, size, root, frontier)
WHERE l.chain = $1 AND l.seq = u.seq
"""


def _leaves(entry: Any, rows: list[Any], pruned: Any) -> list[bytes] | None:
    """The batch's event hashes in leaf order (None: pruned whole before the log existed)."""
    if pruned is not None and pruned["leaves"] is None:
        return None
    by_index = {r["leaf_index"]: bytes(r["hash"]) for r in rows}
    gone = dict(unpack_leaves(pruned["leaves"] if pruned is not None else None))
    if len(by_index) != len(rows) or by_index.keys() & gone.keys():
        by_index = {}  # two rows claim one leaf: refused below
    by_index.update(gone)
    if sorted(by_index) != list(range(entry["event_count"])):
        raise RuntimeError(
            f"0012: the batch of ledger entry {entry['seq']} does not hold its "
            f"{entry['event_count']} leaves (run `python -m app verify`); the log cannot be built"
        )
    return [by_index[i] for i in range(entry["event_count"])]


class _Progress:
    """A line on stderr every few seconds, for tables that take a while."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.events = 0

    def add(self, chain: int, seq: int, events: int) -> None:
        self.events += events
        now = time.monotonic()
        if now - self.last >= 5:
            rate = self.events / (now - self.started)
            print(
                f"0012: {self.events:,} events into the log (chain {chain}, seq {seq}), "
                f"{rate:,.0f}/s",
                file=sys.stderr,
                flush=True,
            )
            self.last = now


def _build_logs(raw: Any) -> None:
    """Every chain's log from its sealed events, ENTRIES_PER_STEP entries at a time."""
    progress = _Progress()
    await_only(raw.execute("SELECT audit_summarize_batch_ranges()"))
    await_only(raw.execute("SET LOCAL enable_seqscan = off"))  # the batch BRIN is the way in
    for chain in [r[0] for r in await_only(raw.fetch(CHAINS))]:
        frontier: Frontier = EMPTY_FRONTIER
        after = 0
        while entries := await_only(raw.fetch(ENTRIES, chain, after, ENTRIES_PER_STEP)):
            ids = [e["batch_id"] for e in entries]
            rows: dict[int, list[Any]] = {i: [] for i in ids}
            for row in await_only(raw.fetch(ROWS, min(ids), max(ids))):
                if row["batch_id"] in rows:
                    rows[row["batch_id"]].append(row)
            pruned = {r["batch_id"]: r for r in await_only(raw.fetch(PRUNED, ids))}
            sizes, roots, frontiers, nodes = [], [], [], []
            for entry in entries:
                digests = _leaves(entry, rows[entry["batch_id"]], pruned.get(entry["batch_id"]))
                if digests:
                    frontier, made = append_leaves(frontier, [leaf_hash(d) for d in digests])
                    nodes += made
                sizes.append(frontier.size)
                roots.append(frontier_root(frontier))
                frontiers.append(pack_frontier(frontier))
            tiles = tile_appends(nodes)
            if tiles.levels:
                await_only(raw.execute(TILES, chain, tiles.levels, tiles.indexes, tiles.hashes))
            seqs = [e["seq"] for e in entries]
            await_only(raw.execute(FILL, chain, seqs, sizes, roots, frontiers))
            after = seqs[-1]
            progress.add(chain, after, sum(e["event_count"] for e in entries))
    await_only(raw.execute("SET LOCAL enable_seqscan = on"))


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)
    raw = op.get_bind().connection.driver_connection
    _build_logs(raw)
    for statement in AFTER_BACKFILL:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
